package worker

import (
	"errors"
	"strings"
	"testing"

	"github.com/sendq/sendq/queue"
)

// The MAIL FROM line carries what the server offers and the message needs
// and nothing else, the same one by one and pipelined (issue 11).
func TestSendMailFromParameters(t *testing.T) {
	tests := []struct {
		name string
		ehlo []string
		env  Envelope
		want []string // the commands after EHLO, up to DATA
	}{
		{"SIZE, DSN with ENVID", []string{"PIPELINING", "8BITMIME", "DSN", "SIZE 1000"},
			Envelope{From: "a@example.com", To: []string{"b@example.com"}, DSN: true, EnvID: "0190b6a4+id=1", Size: 18},
			[]string{"MAIL FROM:<a@example.com> BODY=8BITMIME SIZE=18 RET=HDRS ENVID=0190b6a4+2Bid+3D1", "RCPT TO:<b@example.com> NOTIFY=SUCCESS,FAILURE,DELAY", "DATA"}},
		{"SIZE with no limit, SMTPUTF8 offered but not needed", []string{"PIPELINING", "SIZE", "SMTPUTF8"},
			Envelope{From: "a@example.com", To: []string{"b@example.com"}, Size: 18},
			[]string{"MAIL FROM:<a@example.com> SIZE=18", "RCPT TO:<b@example.com>", "DATA"}},
		{"SMTPUTF8 for a UTF-8 header", []string{"PIPELINING", "8BITMIME", "SMTPUTF8"},
			Envelope{From: "a@example.com", To: []string{"b@example.com"}, UTF8Header: true, EightBit: true},
			[]string{"MAIL FROM:<a@example.com> BODY=8BITMIME SMTPUTF8", "RCPT TO:<b@example.com>", "DATA"}},
		{"SMTPUTF8 for a UTF-8 address, one by one", []string{"8BITMIME", "SMTPUTF8"},
			Envelope{From: "a@example.com", To: []string{"김민준@example.com"}},
			[]string{"MAIL FROM:<a@example.com> BODY=8BITMIME SMTPUTF8", "RCPT TO:<김민준@example.com>", "DATA"}},
		{"DSN not offered: no ENVID", []string{"PIPELINING"},
			Envelope{From: "a@example.com", To: []string{"b@example.com"}, DSN: true, EnvID: "x"},
			[]string{"MAIL FROM:<a@example.com>", "RCPT TO:<b@example.com>", "DATA"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			steps := []scriptStep{{"DATA", "250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go ahead\r\n"}}
			if !strings.Contains(strings.Join(tt.ehlo, " "), "PIPELINING") {
				steps = []scriptStep{{"MAIL", "250 2.1.0 ok\r\n"}, {"RCPT", "250 2.1.5 ok\r\n"}, {"DATA", "354 go ahead\r\n"}}
			}
			steps = append(steps, scriptStep{".", "250 2.0.0 Ok: queued as 034D2DE4CF\r\n"}, scriptStep{"QUIT", "221 bye\r\n"})
			addr, lines := scriptedSMTP(t, tt.ehlo, steps)
			res := sendOnce(t, addr, tt.env, "Subject: x\r\n\r\nhi\r\n")
			if !res.Delivered || res.Reply != (queue.Reply{Code: 250, EnhancedCode: "2.0.0", Message: "Ok: queued as 034D2DE4CF"}) {
				t.Errorf("Send = %+v; want delivered with the server's reply", res)
			}
			if got := lines(); len(got) < 1+len(tt.want) || strings.Join(got[1:1+len(tt.want)], "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("commands = %q; want after EHLO %q", got, tt.want)
			}
		})
	}
}

// What the server lacks is judged before any command: the message is never
// offered (after EHLO the client says only QUIT), and each refused
// recipient fails permanently with a RefusedError naming the reason.
func TestSendRefusesWhatTheServerLacks(t *testing.T) {
	tests := []struct {
		name      string
		ehlo      []string
		env       Envelope
		reason    string
		enhanced  string
		refused   []string
		offeredTo string // the one recipient still offered, if any
	}{
		{"over the SIZE limit", []string{"PIPELINING", "8BITMIME", "SIZE 100"},
			Envelope{From: "a@example.com", To: []string{"b@example.com", "c@example.com"}, Size: 101},
			queue.ReasonTooLarge, "5.3.4", []string{"b@example.com", "c@example.com"}, ""},
		{"8-bit content without 8BITMIME", []string{"PIPELINING", "SIZE 1000"},
			Envelope{From: "a@example.com", To: []string{"b@example.com"}, Size: 20, EightBit: true},
			queue.ReasonUnsupported, "5.6.3", []string{"b@example.com"}, ""},
		{"UTF-8 header without SMTPUTF8", []string{"PIPELINING", "8BITMIME"},
			Envelope{From: "a@example.com", To: []string{"b@example.com"}, UTF8Header: true, EightBit: true},
			queue.ReasonUnsupported, "5.6.9", []string{"b@example.com"}, ""},
		{"UTF-8 sender without SMTPUTF8", []string{"PIPELINING", "8BITMIME"},
			Envelope{From: "김민준@example.com", To: []string{"b@example.com"}},
			queue.ReasonUnsupported, "5.6.7", []string{"b@example.com"}, ""},
		{"one UTF-8 recipient without SMTPUTF8", []string{"PIPELINING", "8BITMIME"},
			Envelope{From: "a@example.com", To: []string{"김민준@example.com", "b@example.com"}},
			queue.ReasonUnsupported, "5.6.7", []string{"김민준@example.com"}, "b@example.com"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			steps := []scriptStep{{"QUIT", "221 bye\r\n"}}
			if tt.offeredTo != "" {
				steps = []scriptStep{{"DATA", "250 ok\r\n250 ok\r\n354 go ahead\r\n"}, {".", "250 2.0.0 queued\r\n"}, {"QUIT", "221 bye\r\n"}}
			}
			addr, lines := scriptedSMTP(t, tt.ehlo, steps)
			res := sendOnce(t, addr, tt.env, "Subject: x\r\n\r\nhi\r\n")
			for _, r := range tt.refused {
				var re *RefusedError
				if err := res.Rcpt[r]; !errors.As(err, &re) || re.Reason != tt.reason || re.EnhancedCode != tt.enhanced {
					t.Errorf("%s: %v; want refused, %s %s", r, err, tt.reason, tt.enhanced)
				}
				if v, reply := Classify(res.Rcpt[r]); v != Permanent || reply.Code != 0 || reply.EnhancedCode != tt.enhanced {
					t.Errorf("Classify(%v) = %v %+v; want permanent, no reply code, %s", res.Rcpt[r], v, reply, tt.enhanced)
				}
			}
			got := lines()
			if tt.offeredTo == "" {
				if res.Delivered || res.Broken || len(got) != 2 || !strings.HasPrefix(got[1], "QUIT") {
					t.Errorf("Send = %+v, commands %q; want nothing offered (EHLO, QUIT), the connection reusable", res, got)
				}
				return
			}
			if !res.Delivered || res.Rcpt[tt.offeredTo] != nil || len(got) < 3 || got[2] != "RCPT TO:<"+tt.offeredTo+">" || got[3] != "DATA" {
				t.Errorf("Send = %+v, commands %q; want only %s offered and delivered", res, got, tt.offeredTo)
			}
		})
	}
}
