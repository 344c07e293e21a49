package producer

import (
	"encoding/base64"
	"errors"
	"testing"
)

// largeRequestBody is a request at SENDQ_MAX_MESSAGE_BYTES' default
// (25 MiB), almost all of it one base64 attachment: the largest body the
// intake decodes.
func largeRequestBody() []byte {
	const limit = 25 << 20
	head := `{"From":"Sales Bot <sales-bot@contoso.example>","To":"recipient1@contoso.example","Subject":"Quarterly report",` +
		`"Body":"<p>The report is attached.</p>","Attachments":[{"ContentType":"application/pdf","FileName":"report.pdf","ContentData":"`
	tail := `"}]}`
	data := make([]byte, (limit-len(head)-len(tail))/4*3)
	for i := range data {
		data[i] = byte(i * 7)
	}
	return []byte(head + base64.StdEncoding.EncodeToString(data) + tail)
}

// BenchmarkDecodeRequestLarge decodes a 25 MiB request.
func BenchmarkDecodeRequestLarge(b *testing.B) {
	body := largeRequestBody()
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if _, err := DecodeRequest(body, Limits{}); err != nil {
			b.Fatal(err)
		}
	}
}

// hostileBodies are one of each kind of the bodies TestDecodeRequestHostile
// and TestDecodeRequestNotAnObject refuse: injection, invalid UTF-8 and
// lone surrogates, unknown and duplicate members, wrong types, bad
// attachments, bad JSON.
func hostileBodies() []string {
	att := func(members string) string { return minimal(`"Attachments":[{` + members + `}]`) }
	return []string{
		minimal(`"Subject":"Hi\r\nBcc: victim@example.com"`),
		`{"From":"=?utf-8?q?a=0D=0Abcc=3A_x=40evil.com?= <f@example.com>","To":"t@example.com"}`,
		`{"From":"f@example.com","To":"\"<x@evil.com>\"@example.com"}`,
		`{"From":"f@example.com","To":"` + recipients(101) + `"}`,
		minimal(`"Subject":"caf` + "\xe9" + `"`),
		att(`"ContentData":"YQ==","FileName":"a` + "\x80" + `.txt"`),
		minimal(`"Subj` + "\xff" + `ect":"x"`),
		minimal(`"Subject":"smile \ud83d"`),
		att(`"ContentData":"not base64!","FileName":"a.txt"`),
		att(`"ContentData":"YQ==","FileName":"../x"`),
		att(`"ContentData":"YQ==","FileName":"a.png","ContentId":"a>b"`),
		minimal(`"Sender":"x@example.com"`),
		att(`"ContentData":"YQ==","FileName":"a.txt","Name":"b.txt"`),
		minimal(`"Subject":"a","subject":"b"`),
		att(`"ContentData":"YQ==","FileName":"a.txt","filename":"b.txt"`),
		`{"From":"f@example.com","To":[1,2]}`,
		minimal(`"IsHtml":"yes"`),
		minimal(`"Attachments":["a.txt"]`),
		`{"From":"f@example.com","To":"t@example.com",}`,
		`[{"From":"f@example.com","To":"t@example.com"}]`,
	}
}

// BenchmarkDecodeRequestHostile decodes each of hostileBodies once per
// iteration; every one must be refused with a *FieldError.
func BenchmarkDecodeRequestHostile(b *testing.B) {
	var bodies [][]byte
	n := 0
	for _, s := range hostileBodies() {
		bodies = append(bodies, []byte(s))
		n += len(s)
	}
	b.ReportAllocs()
	b.SetBytes(int64(n))
	for b.Loop() {
		for _, body := range bodies {
			var fe *FieldError
			if _, err := DecodeRequest(body, Limits{}); !errors.As(err, &fe) {
				b.Fatalf("DecodeRequest(%q) = %v; want a *FieldError", body, err)
			}
		}
	}
}
