package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/sendq/sendq/internal/proctest"
	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/internal/smtptest"
)

// Hostile requests through the real binary: each gets a 4xx naming the
// field, and nothing reaches the SMTP server.
func TestHostileInputNeverReachesSMTP(t *testing.T) {
	rs := redistest.Start(t)
	sink := smtptest.Start(t)
	p := proctest.Start(t, binary, "serve", "REDIS_URL="+rs.URL(), "SENDQ_SMTP_URL=smtp://"+sink.Addr+"?tls=none",
		"SENDQ_MAX_RECIPIENTS=5", "SENDQ_MAX_MESSAGE_BYTES=65536")
	base := "http://" + p.Addr
	var rcpts []string
	for i := 0; i < 6; i++ {
		rcpts = append(rcpts, fmt.Sprintf("x%d@example.com", i))
	}
	many := strings.Join(rcpts, ";")
	tests := []struct {
		name, body, field string
		code              int
	}{
		{"CRLF in Subject", `{"From":"a@example.com","To":"b@example.com","Subject":"hi\r\nBcc: evil@example.net"}`, "Subject", 400},
		{"LF in a name", `{"From":"a@example.com","To":"Bob\nBcc: evil@example.net <b@example.com>"}`, "To", 400},
		{"NUL in an address", `{"From":"a@example.com","To":"b\u0000@example.com"}`, "To", 400},
		{"encoded CRLF in a name", `{"From":"=?utf-8?q?x=0D=0ABcc:_evil@example.net?= <a@example.com>","To":"b@example.com"}`, "From", 400},
		{"quoted local part with >", `{"From":"a@example.com","To":"\"x>y\"@example.com"}`, "To", 400},
		{"quoted local part with space", `{"From":"a@example.com","To":"\"x y\"@example.com"}`, "To", 400},
		{"too many recipients", `{"From":"a@example.com","To":"` + many + `"}`, "To", 400},
		{"invalid UTF-8", "{\"From\":\"a@example.com\",\"To\":\"b@example.com\",\"Subject\":\"\xff\xfe\"}", "Subject", 400},
		{"invalid base64", `{"From":"a@example.com","To":"b@example.com","Attachments":[{"ContentData":"!!!","FileName":"a.txt"}]}`, "Attachments[0].ContentData", 400},
		{"path in a file name", `{"From":"a@example.com","To":"b@example.com","Attachments":[{"ContentData":"aGk=","FileName":"../../etc/passwd"}]}`, "Attachments[0].FileName", 400},
		{"CRLF in a file name", `{"From":"a@example.com","To":"b@example.com","Attachments":[{"ContentData":"aGk=","FileName":"a\r\nX-Evil: 1"}]}`, "Attachments[0].FileName", 400},
		{"body over the limit", `{"From":"a@example.com","To":"b@example.com","Body":"` + strings.Repeat("x", 70000) + `"}`, "", 413},
	}
	for _, tt := range tests {
		r := call(t, "POST", base+"/v1/emails", []byte(tt.body), nil)
		var e struct {
			Error struct{ Code, Field, Message string }
		}
		if err := json.Unmarshal(r.Body, &e); err != nil || r.Resp.StatusCode != tt.code || e.Error.Field != tt.field {
			t.Errorf("%s: %d %s; want %d naming %q", tt.name, r.Resp.StatusCode, r.Body, tt.code, tt.field)
		}
	}
	// A good email after the hostile ones shows the pipeline was working.
	good := call(t, "POST", base+"/v1/emails", []byte(`{"From":"a@example.com","To":"b@example.com","Subject":"ok"}`), nil)
	var acc struct{ ID string }
	_ = json.Unmarshal(good.Body, &acc)
	waitStatus(t, base, acc.ID, nil, "sent")
	time.Sleep(200 * time.Millisecond)
	if msgs := sink.Messages(); len(msgs) != 1 || strings.Join(msgs[0].To, ",") != "b@example.com" {
		t.Errorf("the SMTP server got %d messages; want only the good one", len(msgs))
	}
}
