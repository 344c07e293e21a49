package queue

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"
	"unicode/utf8"
)

// FuzzAppendEmail keeps the hand-written payload encoder byte for byte
// equal to json.Marshal, errors included.
func FuzzAppendEmail(f *testing.F) {
	f.Add("id-1", "Name", "a@b.c", "subj <&> \u2028 \xff", "body\x00\x1f\x7f", "high", []byte("data"), int64(1700000000), int64(123), 3600, true, true, 2)
	f.Add("", "", "", "", "", "", []byte(nil), int64(-62135596800-10), int64(0), 0, false, false, 0)
	f.Add("x", "é\"\\", "q", "\t\n\r\b\f", "\u2029", "", []byte{}, int64(253402300800), int64(5), 86400, false, true, 1)
	f.Fuzz(func(t *testing.T, id, name, addr, subj, body, imp string, data []byte, sec, nsec int64, off int, isHTML, dr bool, n int) {
		loc := time.FixedZone("z", off)
		e := &Email{V: 1, ID: id, CreatedAt: time.Unix(sec, nsec).In(loc),
			From: Address{Name: name, Address: addr}, Subject: subj, Body: body, IsHTML: isHTML,
			Importance: imp, ReadReceipt: addr, DeliveryReceipt: dr, ReturnPath: name, BodyHash: subj, Owner: imp}
		if n%3 == 1 {
			e.SendAt = time.Unix(nsec, sec).UTC()
		}
		if n%2 == 1 {
			e.To = []Address{{Name: subj, Address: body}, {Address: id}}
			e.Bcc = []Address{}
			e.Attachments = []Attachment{{FileName: name, ContentType: subj, ContentID: body, Data: data}, {FileName: ""}}
		}
		if n%5 == 2 {
			e.Cc = []Address{{Name: "x"}}
			e.Attachments = []Attachment{}
		}
		switch n % 7 {
		case 3:
			e.Metadata = map[string]string{name: subj, body: addr, "order": id}
		case 4:
			e.Metadata = map[string]string{}
		}
		want, werr := json.Marshal(e)
		got, ok := appendEmail(nil, e)
		if (werr == nil) != ok {
			t.Fatalf("ok %v, json err %v", ok, werr)
		}
		if ok && !bytes.Equal(got, want) {
			t.Fatalf("got\n%s\nwant\n%s", got, want)
		}
	})
}

// FuzzAppendEmailSuppression covers the fields of suppression and
// one-click unsubscribe the same way.
func FuzzAppendEmailSuppression(f *testing.F) {
	f.Add("id-1", "a@b.c", "hard_bounce", true, 2)
	f.Add("", "\u2028<&>\xff", "", false, 0)
	f.Fuzz(func(t *testing.T, id, addr, reason string, lu bool, n int) {
		e := &Email{V: 1, ID: id, CreatedAt: time.Unix(1700000000, 0).UTC(), From: Address{Address: addr},
			To: []Address{{Address: addr}}, ListUnsubscribe: lu}
		for i := 0; i < n%4; i++ {
			e.Suppressed = append(e.Suppressed, Suppressed{Address: addr, Reason: reason})
		}
		if n%5 == 4 {
			e.Suppressed = []Suppressed{}
		}
		want, werr := json.Marshal(e)
		got, ok := appendEmail(nil, e)
		if werr != nil || !ok {
			t.Fatalf("ok %v, json err %v", ok, werr)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("got\n%s\nwant\n%s", got, want)
		}
		if len(got) > encodedSize(e) && !bytes.ContainsAny([]byte(addr+reason+id), "\"\\<>&\u2028\u2029") && utf8.ValidString(addr+reason+id) && !hasCtl(addr+reason+id) {
			t.Errorf("encodedSize %d < %d for a payload without escapes", encodedSize(e), len(got))
		}
	})
}

func hasCtl(s string) bool {
	for _, c := range []byte(s) {
		if c < 0x20 {
			return true
		}
	}
	return false
}
