package worker

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"os"
	"strings"
	"testing"

	"github.com/sendq/sendq/queue"
)

func TestClassify(t *testing.T) {
	tests := []struct {
		err       error
		want      Verdict
		wantReply queue.Reply
	}{
		{nil, Accepted, queue.Reply{Code: 250}},
		{&textproto.Error{Code: 451, Msg: "4.3.0 try later"}, Transient, queue.Reply{Code: 451, EnhancedCode: "4.3.0", Message: "try later"}},
		{&textproto.Error{Code: 550, Msg: "5.1.1 no such user"}, Permanent, queue.Reply{Code: 550, EnhancedCode: "5.1.1", Message: "no such user"}},
		{&textproto.Error{Code: 554, Msg: "transaction failed"}, Permanent, queue.Reply{Code: 554, Message: "transaction failed"}},
		{&textproto.Error{Code: 552, Msg: "4.2.2 mailbox full"}, Transient, queue.Reply{Code: 552, EnhancedCode: "4.2.2", Message: "mailbox full"}},
		{&textproto.Error{Code: 550, Msg: "4.7.1 greylisted"}, Transient, queue.Reply{Code: 550, EnhancedCode: "4.7.1", Message: "greylisted"}},
		{&textproto.Error{Code: 421, Msg: "4.7.0 closing"}, Transient, queue.Reply{Code: 421, EnhancedCode: "4.7.0", Message: "closing"}},
		{fmt.Errorf("send RCPT TO: %w", &textproto.Error{Code: 553, Msg: "5.1.3 bad address"}), Permanent, queue.Reply{Code: 553, EnhancedCode: "5.1.3", Message: "bad address"}},
		{io.EOF, Transient, queue.Reply{Message: "EOF"}},
		{&net.OpError{Op: "read", Err: os.ErrDeadlineExceeded}, Transient, queue.Reply{Message: "read: i/o timeout"}},
		{&DialError{Err: &textproto.Error{Code: 535, Msg: "5.7.8 bad credentials"}}, Transient, queue.Reply{Code: 535, EnhancedCode: "5.7.8", Message: "bad credentials"}},
		{&DialError{Err: errors.New("connection refused")}, Transient, queue.Reply{Message: "dial smtp: connection refused"}},
	}
	for _, tt := range tests {
		got, reply := Classify(tt.err)
		if got != tt.want || reply != tt.wantReply {
			t.Errorf("Classify(%v) = %v %+v; want %v %+v", tt.err, got, reply, tt.want, tt.wantReply)
		}
	}
}

func TestThrottled(t *testing.T) {
	for _, tt := range []struct {
		r    queue.Reply
		want bool
	}{
		{queue.Reply{Code: 421}, true},
		{queue.Reply{Code: 451, EnhancedCode: "4.7.1"}, true},
		{queue.Reply{Code: 451, EnhancedCode: "4.3.0"}, false},
		{queue.Reply{Code: 550, EnhancedCode: "5.7.1"}, false},
	} {
		if got := throttled(tt.r); got != tt.want {
			t.Errorf("throttled(%+v) = %v; want %v", tt.r, got, tt.want)
		}
	}
}

func TestParseRelay(t *testing.T) {
	tests := []struct {
		url     string
		want    string // Relay.String(), which never shows the password
		wantErr bool
	}{
		{"smtp://user:p%40ss@mail.example.com", "smtp://user@mail.example.com:587?auth=plain&tls=starttls", false},
		{"smtp://mail.example.com:25?tls=none", "smtp://mail.example.com:25?tls=none", false},
		{"smtps://mail.example.com", "smtps://mail.example.com:465", false},
		{"smtp://u:p@h:2525?auth=login", "smtp://u@h:2525?auth=login&tls=starttls", false},
		{"smtps://h?tls=none", "", true},
		{"http://h", "", true},
		{"smtp://h?tls=maybe", "", true},
		{"smtp://h?auth=plain", "", true},
		{"smtp://:25", "", true},
		{"smtp://h:25?tls=none&pipelining=false", "smtp://h:25?pipelining=false&tls=none", false},
		{"smtp://h:25?pipelining=true", "smtp://h:25?tls=starttls", false},
		{"smtp://h?pipelining=no", "", true},
		{"smtp://h:587?tls_skip_verify=true", "smtp://h:587?tls=starttls&tls_skip_verify=true", false},
		{"smtps://u:p@h?tls_skip_verify=true", "smtps://u@h:465?auth=plain&tls_skip_verify=true", false},
		{"smtp://h:587?tls_skip_verify=false", "smtp://h:587?tls=starttls", false},
	}
	for _, tt := range tests {
		r, err := ParseRelay(tt.url)
		if (err != nil) != tt.wantErr {
			t.Errorf("ParseRelay(%q) error = %v; want error %v", tt.url, err, tt.wantErr)
			continue
		}
		if err == nil && r.String() != tt.want {
			t.Errorf("ParseRelay(%q).String() = %q; want %q", tt.url, r.String(), tt.want)
		}
	}
	if _, err := ParseRelay("smtp://u:se%ZZcret@h"); err == nil || contains(err.Error(), "se%ZZcret") {
		t.Errorf("a malformed URL error must not echo the password: %v", err)
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }
