package producer_test

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/sendq/sendq/internal/apitest"
	"github.com/sendq/sendq/producer"
)

// A SendAt is held between the far past (its delivery window, SENDQ_MAX_AGE
// from it, over) and SENDQ_MAX_SCHEDULE ahead; outside, it is a 400 that
// names SendAt and nothing is queued.
func TestSendAtBounds(t *testing.T) {
	t.Parallel()
	now := time.Now()
	at := func(d time.Duration) string { return now.Add(d).UTC().Format(time.RFC3339) }
	tests := []struct {
		name   string
		limits producer.Limits
		sendAt string
		code   int
		status string // of a 202
	}{
		{"end of time", producer.Limits{}, "9999-12-31T23:59:59Z", 400, ""},
		{"31 days ahead", producer.Limits{}, at(31 * 24 * time.Hour), 400, ""},
		{"29 days ahead", producer.Limits{}, at(29 * 24 * time.Hour), 202, "scheduled"},
		{"an hour ago", producer.Limits{}, at(-time.Hour), 202, "queued"},
		{"73 hours ago", producer.Limits{}, at(-73 * time.Hour), 400, ""},
		{"year one", producer.Limits{}, "0001-01-01T00:00:01Z", 400, ""},
		{"beyond a configured schedule", producer.Limits{MaxSchedule: time.Hour}, at(2 * time.Hour), 400, ""},
		{"within a configured schedule", producer.Limits{MaxSchedule: time.Hour}, at(30 * time.Minute), 202, "scheduled"},
		{"before a configured max age", producer.Limits{MaxAge: 20 * time.Second}, at(-time.Minute), 400, ""},
		{"within a configured max age", producer.Limits{MaxAge: 20 * time.Second}, at(-5 * time.Second), 202, "queued"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setupAPI(t, func(c *producer.Config) { c.Limits = tt.limits })
			r := b.do(t, "POST", "/v1/emails", `{"From":"a@example.com","To":"b@example.com","SendAt":"`+tt.sendAt+`"}`, nil)
			code, field := errField(r)
			if r.code != tt.code || (tt.code == 400 && (code != "invalid_field" || field != "SendAt")) || (tt.code == 202 && r.body["status"] != tt.status) {
				t.Fatalf("POST with SendAt %s = %d %s; want %d %s", tt.sendAt, r.code, r.raw, tt.code, tt.status)
			}
			qi, err := b.insp.Queues()
			if tt.code == 400 && (err != nil || len(qi) != 0) {
				t.Errorf("a refused SendAt left queues %v (%v); want nothing queued", qi, err)
			}
		})
	}
}

// attachments returns n small attachment objects.
func attachments(n int) string {
	parts := make([]string, n)
	for i := range parts {
		parts[i] = fmt.Sprintf(`{"ContentData":"aGk=","FileName":"f%d.txt"}`, i)
	}
	return "[" + strings.Join(parts, ",") + "]"
}

func TestAttachmentAndSubjectLimits(t *testing.T) {
	t.Parallel()
	b := setupAPI(t, nil)
	small := setupAPI(t, func(c *producer.Config) { c.Limits.MaxAttachments = 2 })
	words := func(n int) string { return strings.Repeat("ab ", n/3) + strings.Repeat("x", n%3) }
	tests := []struct {
		name   string
		api    *apiBundle
		fields string
		code   int
		field  string
	}{
		{"100 attachments", b, `"Attachments":` + attachments(100), 202, ""},
		{"101 attachments", b, `"Attachments":` + attachments(101), 400, "Attachments"},
		{"3 attachments over a limit of 2", small, `"Attachments":` + attachments(3), 400, "Attachments"},
		{"2 attachments at a limit of 2", small, `"Attachments":` + attachments(2), 202, ""},
		{"2000-character subject", b, `"Subject":"` + words(2000) + `"`, 202, ""},
		{"2001-character subject", b, `"Subject":"` + words(2001) + `"`, 400, "Subject"},
		// Characters, not bytes: 2,000 Hangul syllables are 6,000 bytes.
		{"2000 Korean characters", b, `"Subject":"` + strings.Repeat("새 ", 1000) + `"`, 202, ""},
		{"2001 Korean characters", b, `"Subject":"` + strings.Repeat("새 ", 1000) + `새"`, 400, "Subject"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := tt.api.do(t, "POST", "/v1/emails", `{"From":"a@example.com","To":"b@example.com",`+tt.fields+`}`, nil)
			code, field := errField(r)
			if r.code != tt.code || (tt.code == 400 && (code != "invalid_field" || field != tt.field)) {
				t.Errorf("POST = %d %s; want %d naming %q", r.code, r.raw, tt.code, tt.field)
			}
		})
	}
}

// Every Unicode bidirectional control is refused in a file name, naming the
// attachment: "invoice\u202Efdp.exe" shows as "invoiceexe.pdf".
func TestBidiControlsInFileName(t *testing.T) {
	t.Parallel()
	b := setupAPI(t, nil)
	controls := []rune{0x202a, 0x202b, 0x202c, 0x202d, 0x202e, 0x2066, 0x2067, 0x2068, 0x2069, 0x200e, 0x200f, 0x061c}
	for _, c := range controls {
		for _, escaped := range []bool{false, true} {
			name := "invoice" + string(c) + "fdp.exe"
			if escaped {
				name = fmt.Sprintf(`invoice\u%04xfdp.exe`, c)
			}
			body := `{"From":"a@example.com","To":"b@example.com","Attachments":[{"ContentData":"aGk=","FileName":"ok.txt"},{"ContentData":"aGk=","FileName":"` + name + `"}]}`
			r := b.do(t, "POST", "/v1/emails", body, nil)
			if code, field := errField(r); r.code != 400 || code != "invalid_field" || field != "Attachments[1].FileName" {
				t.Errorf("FileName with U+%04X (escaped %v) = %d %s; want 400 naming Attachments[1].FileName", c, escaped, r.code, r.raw)
			}
		}
	}
	// Right-to-left names without controls are fine.
	r := b.do(t, "POST", "/v1/emails", `{"From":"a@example.com","To":"b@example.com","Attachments":[{"ContentData":"aGk=","FileName":"فاتورة.pdf"}]}`, nil)
	if r.code != 202 {
		t.Errorf("an Arabic file name = %d %s; want 202", r.code, r.raw)
	}
}

// ReadReceipt sends the recipients' read reports somewhere: it is held to
// the global and the key's allow-lists, as From and DeliveryReceipt are.
func TestReadReceiptIsHeldToTheAllowLists(t *testing.T) {
	t.Parallel()
	b := setupAPI(t, func(c *producer.Config) {
		c.Keys = mustKeys(t, "rr-key-0001:@example.com,rr-key-0002")
		c.AllowedFrom = []string{"@example.com", "@corp.test"}
	})
	one := map[string]string{"Authorization": "Bearer rr-key-0001"}
	two := map[string]string{"Authorization": "Bearer rr-key-0002"}
	tests := []struct {
		name, readReceipt string
		header            map[string]string
		code              int
	}{
		{"the sender's domain", "reports@example.com", one, 202},
		{"outside the key's list", "ops@corp.test", one, 403},
		{"outside the global list", "x@elsewhere.test", two, 403},
		{"inside the global list", "ops@corp.test", two, 202},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := b.do(t, "POST", "/v1/emails", `{"From":"a@example.com","To":"b@example.com","ReadReceipt":"`+tt.readReceipt+`"}`, tt.header)
			code, field := errField(r)
			if r.code != tt.code || (tt.code == 403 && (code != "sender_not_allowed" || field != "ReadReceipt")) {
				t.Errorf("POST with ReadReceipt %s = %d %s; want %d", tt.readReceipt, r.code, r.raw, tt.code)
			}
		})
	}
}

// rawExchange writes head (a request's start line and headers) to addr and
// returns the status lines the server answered with, in order, until it
// sent a final (non-1xx) one.
func rawExchange(t *testing.T, addr, head string, afterHead func(net.Conn)) (lines []string) {
	t.Helper()
	lines, _, _ = rawResponse(t, addr, head, afterHead)
	return lines
}

// rawResponse is rawExchange that also returns the final response and its
// body.
func rawResponse(t *testing.T, addr, head string, afterHead func(net.Conn)) (lines []string, final *http.Response, body []byte) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, head); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("after %q: reading the answer: %v", lines, err)
		}
		lines = append(lines, resp.Status)
		if resp.StatusCode >= 200 {
			body, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			return lines, resp, body
		}
		if afterHead != nil {
			afterHead(c)
			afterHead = nil
		}
	}
}

// A client that asks before sending a body (Expect: 100-continue) with a
// Content-Length over the limit gets the 413 at once, never 100 Continue:
// it sends none of the body.
func TestExpectContinueOverTheLimitIs413WithoutContinue(t *testing.T) {
	t.Parallel()
	b := setupAPI(t, nil) // MaxBodyBytes 64 KiB
	addr := strings.TrimPrefix(b.srv.URL, "http://")
	head := func(n int) string {
		return "POST /v1/emails HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\n" +
			fmt.Sprintf("Content-Length: %d\r\n\r\n", n)
	}
	if got := rawExchange(t, addr, head(30<<20), nil); len(got) != 1 || !strings.HasPrefix(got[0], "413") {
		t.Errorf("Expect: 100-continue with Content-Length 30 MiB answered %q; want only 413", got)
	}
	// Under the limit the client is told to go on, and its email is queued.
	body := `{"From":"a@example.com","To":"b@example.com"}`
	got := rawExchange(t, addr, head(len(body)), func(c net.Conn) { _, _ = io.WriteString(c, body) })
	if len(got) != 2 || !strings.HasPrefix(got[0], "100") || !strings.HasPrefix(got[1], "202") {
		t.Errorf("Expect: 100-continue with a small body answered %q; want 100 then 202", got)
	}
	// Without Expect the declared length decides too.
	if got := rawExchange(t, addr, strings.Replace(head(30<<20), "Expect: 100-continue\r\n", "", 1), nil); len(got) != 1 || !strings.HasPrefix(got[0], "413") {
		t.Errorf("Content-Length 30 MiB answered %q; want 413", got)
	}
}

// A body that arrives slower than the server's read timeout gets a 408,
// also when the write timeout (as long as the read timeout in
// NewHTTPServer, and counted from a little later) has passed by the time
// the handler learns of it.
func TestSlowBodyGets408(t *testing.T) {
	t.Parallel()
	b := setupAPI(t, nil)
	for _, tt := range []struct {
		name        string
		read, write time.Duration
	}{
		{"as NewHTTPServer sets them", time.Second, time.Second},
		{"write timeout first", time.Second, 300 * time.Millisecond},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := producer.NewHTTPServer(b.srv.Config.Handler, slog.New(slog.DiscardHandler))
			srv.ReadTimeout, srv.WriteTimeout = tt.read, tt.write
			ts := httptest.NewUnstartedServer(nil)
			ts.Config = srv
			ts.Start()
			t.Cleanup(ts.Close)

			body := `{"From":"a@example.com","To":"b@example.com"}`
			head := "POST /v1/emails HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" +
				fmt.Sprintf("Content-Length: %d\r\n\r\n", len(body)) + body[:10]
			start := time.Now()
			got := rawExchange(t, strings.TrimPrefix(ts.URL, "http://"), head, nil)
			if len(got) != 1 || !strings.HasPrefix(got[0], "408") {
				t.Errorf("a body cut short answered %q; want 408", got)
			}
			if took := time.Since(start); took > 5*time.Second {
				t.Errorf("the 408 came after %s; want it at the %s read timeout", took, tt.read)
			}
		})
	}
}

// The answers this issue added match the OpenAPI document: real exchanges
// with a real server on Redis.
func TestOpenAPIDocumentsTheEdgeAnswers(t *testing.T) {
	t.Parallel()
	v := apitest.NewValidator(t)
	b := setupAPI(t, func(c *producer.Config) {
		c.Keys = mustKeys(t, isoKeys)
		c.AdminKeys = mustKeys(t, isoAdmin)
		c.ListScanLimit = 2
	})
	exchange := func(method, path, body string, header map[string]string, want int) {
		t.Helper()
		req, resp, respBody := b.exchange(t, method, path, body, header)
		if resp.StatusCode != want {
			t.Fatalf("%s %s = %d %s; want %d", method, path, resp.StatusCode, respBody, want)
		}
		v.Check(t, req, []byte(body), resp, respBody)
	}
	id := b.send(t, alpha)
	b.send(t, beta)
	b.send(t, beta)
	exchange("POST", "/v1/emails", `{"From":"a@contoso.example","To":"b@example.com","SendAt":"9999-12-31T23:59:59Z"}`, alpha, 400)
	exchange("POST", "/v1/emails", `{"From":"a@contoso.example","To":"b@example.com","Attachments":`+attachments(101)+`}`, alpha, 400)
	exchange("POST", "/v1/emails", `{"From":"a@contoso.example","To":"b@example.com","ReadReceipt":"x@elsewhere.example"}`, alpha, 403)
	exchange("GET", "/v1/emails/"+id, "", beta, 404)
	exchange("DELETE", "/v1/emails/"+id, "", beta, 404)
	exchange("POST", "/v1/emails/"+id+"/retry", "", beta, 404)
	exchange("GET", "/v1/emails?status=queued", "", beta, 200) // truncated: 2 of 3 read
	exchange("GET", "/v1/emails?status=queued", "", admin, 200)

	// 413 from the declared length and 408, over a raw connection.
	addr := strings.TrimPrefix(b.srv.URL, "http://")
	req, _ := http.NewRequest("POST", b.srv.URL+"/v1/emails", nil)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", alpha["Authorization"])
	_, resp, body := rawResponse(t, addr, "POST /v1/emails HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"+
		"Authorization: "+alpha["Authorization"]+"\r\nExpect: 100-continue\r\nContent-Length: 99999999\r\n\r\n", nil)
	if resp.StatusCode != 413 {
		t.Errorf("declared 99999999 bytes = %d; want 413", resp.StatusCode)
	}
	v.Check(t, req, nil, resp, body)

	srv := producer.NewHTTPServer(b.srv.Config.Handler, slog.New(slog.DiscardHandler))
	srv.ReadTimeout = 500 * time.Millisecond
	ts := httptest.NewUnstartedServer(nil)
	ts.Config = srv
	ts.Start()
	t.Cleanup(ts.Close)
	_, resp, body = rawResponse(t, strings.TrimPrefix(ts.URL, "http://"), "POST /v1/emails HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"+
		"Authorization: "+alpha["Authorization"]+"\r\nContent-Length: 100\r\n\r\n{", nil)
	if resp.StatusCode != 408 {
		t.Errorf("a body cut short = %d; want 408", resp.StatusCode)
	}
	v.Check(t, req, nil, resp, body)
}
