package main

import (
	"bytes"
	"encoding/json"
	"net/mail"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sendq/sendq/internal/proctest"
)

// The README's quickstart: no configuration at all. sendq runs on an
// embedded Redis and writes what it would send as .eml files.
func TestQuickstartWithNoConfiguration(t *testing.T) {
	p := proctest.Start(t, binary, "serve")
	base := "http://" + p.Addr
	r := call(t, "POST", base+"/v1/emails", seedJSON, nil)
	var acc struct{ ID string }
	if r.Resp.StatusCode != 202 || json.Unmarshal(r.Body, &acc) != nil {
		t.Fatalf("POST = %d %s", r.Resp.StatusCode, r.Body)
	}
	if st := waitStatus(t, base, acc.ID, nil, "sent", "failed"); st["status"] != "sent" {
		t.Fatalf("status = %v", st)
	}
	for _, warn := range []string{"EMBEDDED IN-MEMORY Redis", "EMBEDDED capture server", "WITHOUT authentication"} {
		if !strings.Contains(p.Logs(), warn) {
			t.Errorf("the logs do not warn %q", warn)
		}
	}
	files, _ := filepath.Glob(filepath.Join(p.Dir, "sendq-outbox", "*.eml"))
	if len(files) != 1 {
		t.Fatalf("outbox holds %d .eml files; want 1", len(files))
	}
	data, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	m, err := mail.ReadMessage(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("the .eml does not parse: %v", err)
	}
	if got := m.Header.Get("Message-Id"); got != "<"+acc.ID+"@contoso.example>" {
		t.Errorf("Message-ID = %q", got)
	}
	if got := m.Header.Get("X-Envelope-To"); !strings.Contains(got, "audit@contoso.example") {
		t.Errorf("X-Envelope-To = %q; want every envelope recipient, Bcc included", got)
	}
	if !strings.Contains(p.Logs(), filepath.Base(files[0])) {
		t.Errorf("the log does not name the .eml file")
	}
	p.Stop(t, 30*time.Second)
}
