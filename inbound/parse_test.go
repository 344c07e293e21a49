package inbound_test

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/sendq/sendq/inbound"
)

func readFile(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParsePostfixDSN(t *testing.T) {
	rep, err := inbound.Parse(bytes.NewReader(readFile(t, "postfix-dsn.eml")))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Kind != inbound.KindDSN || rep.Ref != "abcdef" || len(rep.Recipients) != 1 {
		t.Fatalf("Parse = %+v; want one recipient of a delivery-status report, ref abcdef", rep)
	}
	want := inbound.RecipientReport{FinalRecipient: "nobody@dead.test", OriginalRecipient: "nobody@dead.test",
		Action: "failed", Status: "5.1.1", Diagnostic: "mailbox unavailable"}
	if rep.Recipients[0] != want {
		t.Errorf("recipient = %+v; want %+v", rep.Recipients[0], want)
	}
}

func TestParseARF(t *testing.T) {
	rep, err := inbound.Parse(bytes.NewReader(readFile(t, "arf.eml")))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Kind != inbound.KindComplaint || rep.Ref != "abcdef" || rep.Complaint == nil ||
		rep.Complaint.FeedbackType != "abuse" || rep.Complaint.OriginalRcptTo != "Reader@example.net" {
		t.Errorf("Parse = %+v %+v", rep, rep.Complaint)
	}
}

// report builds a delivery status report with the given recipient blocks
// and returned headers.
func report(blocks, returned string) string {
	return "From: MAILER-DAEMON@relay.example\r\nTo: b+x@bounces.example.com\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: multipart/report; report-type=delivery-status; boundary=\"BB\"\r\n\r\n" +
		"--BB\r\nContent-Type: text/plain\r\n\r\nIt failed.\r\n" +
		"--BB\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; relay.example\r\n\r\n" + blocks +
		"\r\n--BB\r\nContent-Type: text/rfc822-headers\r\n\r\n" + returned + "\r\n--BB--\r\n"
}

func TestParseDSNFields(t *testing.T) {
	for _, tc := range []struct {
		name   string
		blocks string
		want   []inbound.RecipientReport
	}{
		{"smtp diagnostic, folded", "Final-Recipient: rfc822; <a@x.test>\r\nAction: Failed\r\nStatus: 5.1.1 (bad mailbox)\r\n" +
			"Diagnostic-Code: smtp; 550 5.1.1 <a@x.test>: Recipient address rejected:\r\n  User unknown\r\n",
			[]inbound.RecipientReport{{FinalRecipient: "a@x.test", Action: "failed", Status: "5.1.1", Code: 550,
				Diagnostic: "550 5.1.1 <a@x.test>: Recipient address rejected: User unknown"}}},
		{"three recipients", "Final-Recipient: rfc822;a@x.test\r\nAction: delayed\r\nStatus: 4.4.1\r\n\r\n" +
			"Final-Recipient: rfc822;b@x.test\r\nAction: delivered\r\nStatus: 2.0.0\r\n\r\n" +
			"Final-Recipient: RFC822; c@x.test\r\nOriginal-Recipient: rfc822; C@X.test\r\nAction: relayed\r\nStatus: 2.0.0\r\n",
			[]inbound.RecipientReport{{FinalRecipient: "a@x.test", Action: "delayed", Status: "4.4.1"},
				{FinalRecipient: "b@x.test", Action: "delivered", Status: "2.0.0"},
				{FinalRecipient: "c@x.test", OriginalRecipient: "C@X.test", Action: "relayed", Status: "2.0.0"}}},
		{"an x400 address is no address sendq sent to", "Final-Recipient: x400; /C=us/\r\nAction: failed\r\nStatus: 5.1.1\r\n", nil},
	} {
		rep, err := inbound.Parse(strings.NewReader(report(tc.blocks, "X-Sendq-Ref: tok\r\n")))
		if tc.want == nil {
			if err == nil {
				t.Errorf("%s: Parse = %+v; want an error", tc.name, rep)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: Parse: %v", tc.name, err)
			continue
		}
		if len(rep.Recipients) != len(tc.want) {
			t.Errorf("%s: %d recipients; want %d", tc.name, len(rep.Recipients), len(tc.want))
			continue
		}
		for i := range tc.want {
			if rep.Recipients[i] != tc.want[i] {
				t.Errorf("%s: recipient %d = %+v; want %+v", tc.name, i, rep.Recipients[i], tc.want[i])
			}
		}
		if rep.Ref != "tok" {
			t.Errorf("%s: ref %q; want tok", tc.name, rep.Ref)
		}
	}
}

func TestParseRefusesWhatIsNoReport(t *testing.T) {
	valid := report("Final-Recipient: rfc822;a@x.test\r\nAction: failed\r\nStatus: 5.1.1\r\n", "")
	for name, tc := range map[string]struct {
		msg       string
		notReport bool
	}{
		"plain auto-reply":     {"From: a@b\r\nSubject: Out of office\r\n\r\nI am away.\r\n", true},
		"multipart/mixed":      {"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n\r\nhi\r\n--x--\r\n", true},
		"other report-type":    {"Content-Type: multipart/report; report-type=disposition-notification; boundary=x\r\n\r\n--x--\r\n", true},
		"no boundary":          {"Content-Type: multipart/report; report-type=delivery-status\r\n\r\nx\r\n", false},
		"bad content-type":     {"Content-Type: multipart/report; ;;;\r\n\r\n", false},
		"no report part":       {strings.Replace(valid, "message/delivery-status", "text/plain", 1), false},
		"no recipient":         {report("", ""), false},
		"bad action":           {report("Final-Recipient: rfc822;a@x.test\r\nAction: exploded\r\nStatus: 5.1.1\r\n", ""), false},
		"bad status":           {report("Final-Recipient: rfc822;a@x.test\r\nAction: failed\r\nStatus: 9.9.9\r\n", ""), false},
		"no final-recipient":   {report("Action: failed\r\nStatus: 5.1.1\r\n", ""), false},
		"two refs":             {report("Final-Recipient: rfc822;a@x.test\r\nAction: failed\r\nStatus: 5.1.1\r\n", "X-Sendq-Ref: a\r\nX-Sendq-Ref: b\r\n"), false},
		"truncated":            {valid[:len(valid)/2], false},
		"empty":                {"", false},
		"address with a comma": {report("Final-Recipient: rfc822;a@x.test,b@x.test\r\nAction: failed\r\nStatus: 5.1.1\r\n", ""), false},
	} {
		rep, err := inbound.Parse(strings.NewReader(tc.msg))
		switch {
		case err == nil:
			t.Errorf("%s: Parse = %+v; want an error", name, rep)
		case tc.notReport != errors.Is(err, inbound.ErrNotReport):
			t.Errorf("%s: Parse error %v; ErrNotReport %v, want %v", name, err, errors.Is(err, inbound.ErrNotReport), tc.notReport)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add(readFile(f, "postfix-dsn.eml"))
	f.Add(readFile(f, "arf.eml"))
	f.Add([]byte(report("Final-Recipient: rfc822;a@x.test\r\nAction: delayed\r\nStatus: 4.4.1\r\nDiagnostic-Code: smtp; 451 later\r\n", "X-Sendq-Ref: t\r\n")))
	f.Add([]byte("Content-Type: multipart/report; report-type=delivery-status; boundary=x\r\n\r\n--x\r\nContent-Type: message/delivery-status\r\nContent-Transfer-Encoding: base64\r\n\r\nRmluYWwtUmVjaXBpZW50OiByZmM4MjI7YUB4LnRlc3QNCkFjdGlvbjogZmFpbGVkDQpTdGF0dXM6IDUuMS4xDQo=\r\n--x--\r\n"))
	f.Fuzz(func(t *testing.T, msg []byte) {
		rep, err := inbound.Parse(bytes.NewReader(msg))
		if err != nil {
			if rep != nil {
				t.Fatalf("Parse returned a report and an error")
			}
			return
		}
		// What a report holds is bounded and well-formed.
		if rep.Kind != inbound.KindDSN && rep.Kind != inbound.KindComplaint {
			t.Fatalf("kind %q", rep.Kind)
		}
		if rep.Kind == inbound.KindDSN && len(rep.Recipients) == 0 {
			t.Fatalf("a DSN without recipients")
		}
		if rep.Kind == inbound.KindComplaint && rep.Complaint == nil {
			t.Fatalf("a complaint without its report")
		}
		for _, r := range rep.Recipients {
			if r.FinalRecipient == "" || strings.Count(r.FinalRecipient, "@") != 1 || len(r.Diagnostic) > 998 {
				t.Fatalf("recipient %+v", r)
			}
			if r.Code != 0 && (r.Code < 200 || r.Code > 599) {
				t.Fatalf("code %d", r.Code)
			}
		}
	})
}

func BenchmarkParsePostfixDSN(b *testing.B) {
	msg := readFile(b, "postfix-dsn.eml")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := inbound.Parse(bytes.NewReader(msg)); err != nil {
			b.Fatal(err)
		}
	}
}
