package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/sendq/sendq/bulk"
	"github.com/sendq/sendq/client"
	"github.com/sendq/sendq/internal/proctest"
	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/internal/smtptest"
	"github.com/sendq/sendq/queue"
)

const sendKey = "send-key-0001"

// sendServer runs `sendq serve` on its own redis-server, delivering to its
// own SMTP sink, with sendKey as API key and env added.
func sendServer(t *testing.T, env ...string) (base string, sink *smtptest.Server) {
	t.Helper()
	base, sink, _ = sendServerRedis(t, env...)
	return base, sink
}

// sendServerRedis is sendServer, and its redis-server.
func sendServerRedis(t *testing.T, env ...string) (base string, sink *smtptest.Server, rs *redistest.Server) {
	t.Helper()
	return sendServerMode(t, "serve", env...)
}

// sendServerMode runs `sendq mode` (serve, or api: no worker) as sendServer.
func sendServerMode(t *testing.T, mode string, env ...string) (base string, sink *smtptest.Server, rs *redistest.Server) {
	t.Helper()
	rs = redistest.Start(t)
	sink = smtptest.Start(t)
	p := proctest.Start(t, binary, mode, append([]string{"REDIS_URL=" + rs.URL(),
		"SENDQ_SMTP_URL=smtp://" + sink.Addr + "?tls=none", "SENDQ_API_KEYS=" + sendKey,
		"SENDQ_LOG_LEVEL=warn"}, env...)...)
	return "http://" + p.Addr, sink, rs
}

// startSend starts `sendq send args` and returns once a progress line
// says at least atLeast rows were answered (failing t if it ends first).
// wait waits for the exit and returns the run, stderr included.
func startSend(t *testing.T, base string, atLeast int, args ...string) (cmd *exec.Cmd, wait func() sendRun) {
	t.Helper()
	cmd = sendCmd(base, args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	progress := regexp.MustCompile(`^sendq send: (\d+)/(\d+) rows`)
	sc := bufio.NewScanner(stderr)
	var errb strings.Builder
	reached := false
	for !reached && sc.Scan() {
		errb.WriteString(sc.Text() + "\n")
		if m := progress.FindStringSubmatch(sc.Text()); m != nil {
			done, _ := strconv.Atoi(m[1])
			total, _ := strconv.Atoi(m[2])
			if done >= total {
				t.Fatalf("sendq send finished before it could be interrupted: %s", sc.Text())
			}
			reached = done >= atLeast
		}
	}
	if !reached {
		_ = cmd.Wait()
		t.Fatalf("sendq send ended before %d rows:\n%s", atLeast, errb.String())
	}
	rest := make(chan struct{})
	go func() { // ends at the process' exit, when stderr closes
		defer close(rest)
		for sc.Scan() {
			errb.WriteString(sc.Text() + "\n")
		}
	}()
	return cmd, func() sendRun {
		<-rest
		err := cmd.Wait()
		r := sendRun{stdout: out.String(), stderr: errb.String()}
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			r.code = ee.ExitCode()
		}
		return r
	}
}

// sendRun is one finished `sendq send`.
type sendRun struct {
	code           int
	stdout, stderr string
}

// runSend runs `sendq send args` against base and waits for it.
func runSend(t *testing.T, base string, args ...string) sendRun {
	t.Helper()
	cmd := sendCmd(base, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := sendRun{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	if strings.Contains(r.stderr, "goroutine ") || strings.Contains(r.stderr, "panic") || strings.Contains(r.stderr, "DATA RACE") {
		t.Errorf("sendq send %v wrote a stack trace:\n%s", args, r.stderr)
	}
	return r
}

func sendCmd(base string, args ...string) *exec.Cmd {
	cmd := exec.Command(binary, append([]string{"send"}, args...)...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "SENDQ_TARGET=" + base, "SENDQ_API_KEY=" + sendKey}
	return cmd
}

// summary reads the summary lines of stdout ("accepted  12").
func (r sendRun) summary(t *testing.T) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, l := range splitLines(r.stdout) {
		f := strings.Fields(l)
		if len(f) >= 2 {
			if f[0] == "not" && len(f) >= 3 {
				f = []string{"not sent", f[2]}
			}
			if n, err := strconv.Atoi(f[1]); err == nil {
				out[f[0]] = n
			}
		}
	}
	return out
}

// jsonlRows writes n batch items to a JSONL file, recipient i being
// user<i>@example.org; bad[i] replaces line i+1's item.
func jsonlRows(t *testing.T, n int, bad map[int]string) string {
	t.Helper()
	var b strings.Builder
	for i := range n {
		if s, ok := bad[i]; ok {
			b.WriteString(s + "\n")
			continue
		}
		fmt.Fprintf(&b, `{"To":"user%d@example.org","Subject":"Order %d shipped","Body":"<p>On its way.</p>"}`+"\n", i, i)
	}
	p := filepath.Join(t.TempDir(), "rows.jsonl")
	if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// csvRows writes a CSV file of n rows (To, Name, Order), recipient i being
// user<i>@example.org; bad[i] replaces row i's line.
func csvRows(t *testing.T, n int, bad map[int]string) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("To,Name,Order\n")
	for i := range n {
		if s, ok := bad[i]; ok {
			b.WriteString(s + "\n")
			continue
		}
		fmt.Fprintf(&b, "user%d@example.org,User %d,A-%d\n", i, i, i)
	}
	p := filepath.Join(t.TempDir(), "rows.csv")
	if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// putTemplate stores template name on the sendq at base.
func putTemplate(t *testing.T, base, name, body string) {
	t.Helper()
	r := call(t, "PUT", base+"/v1/templates/"+name, []byte(body), map[string]string{"Authorization": "Bearer " + sendKey})
	if r.Resp.StatusCode != 201 && r.Resp.StatusCode != 200 {
		t.Fatalf("PUT /v1/templates/%s = %d %s", name, r.Resp.StatusCode, r.Body)
	}
}

// waitCopies waits until the sink holds n messages, then a little longer
// for any extra one, and returns the copies per recipient.
func waitCopies(t *testing.T, sink *smtptest.Server, n int) map[string]int {
	t.Helper()
	start := time.Now()
	deadline := start.Add(90 * time.Second)
	defer func() { t.Logf("waited %s for %d messages", time.Since(start), n) }()
	for len(sink.Messages()) < n {
		if time.Now().After(deadline) {
			t.Fatalf("the sink has %d messages; want %d", len(sink.Messages()), n)
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(time.Second) // a duplicate would be on its way by now
	return sink.Copies()
}

// The test: `sendq send` is SIGKILLed in the middle of the file,
// run again with the same command, and every row is delivered exactly
// once. The intake is rate-limited so the first run is slow enough to be
// killed mid-file (and meets 429s with Retry-After on the way).
func TestSendKilledMidFileThenRerunDeliversEachRowOnce(t *testing.T) {
	t.Parallel()
	const rows = 3000
	base, sink := sendServer(t, "SENDQ_RATE_PER_KEY=600/s")
	putTemplate(t, base, "order-shipped", `{"Subject": "Order {{.Order}} shipped", "Text": "Hi {{.Name}}, order {{.Order}} is on its way."}`)
	file := csvRows(t, rows, nil)
	args := []string{"-template", "order-shipped", "-file", file, "-from", "Shop <shop@example.com>", "-batch", "100", "-parallel", "3", "-progress-interval", "100ms"}

	cmd, wait := startSend(t, base, 500, args...)
	_ = cmd.Process.Signal(syscall.SIGKILL)
	if r := wait(); r.code != -1 {
		t.Fatalf("the first run was not killed mid-file: exit %d\n%s", r.code, r.stderr)
	}

	r := runSend(t, base, args...)
	if r.code != 0 {
		t.Fatalf("the second run exited %d:\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if got, want := r.summary(t), map[string]int{"rows": rows, "accepted": rows, "rejected": 0, "not sent": 0}; !reflect.DeepEqual(got, want) {
		t.Errorf("the second run's summary = %v; want %v", got, want)
	}
	copies := waitCopies(t, sink, rows)
	if len(copies) != rows {
		t.Errorf("%d recipients got mail; want %d", len(copies), rows)
	}
	for i := range rows {
		if n := copies[fmt.Sprintf("user%d@example.org", i)]; n != 1 {
			t.Errorf("user%d@example.org got %d copies; want 1", i, n)
		}
	}

	// A third run finds every batch answered already: nothing more is sent.
	r = runSend(t, base, args...)
	if r.code != 0 || r.summary(t)["accepted"] != rows {
		t.Errorf("the third run = %d:\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if copies := waitCopies(t, sink, rows); len(sink.Messages()) != rows {
		t.Errorf("after a third run the sink has %d messages; want %d (%d recipients)", len(sink.Messages()), rows, len(copies))
	}
}

// The summary, the rejects file and the exit status: rows refused by sendq
// are named by their line (with a blank line before them counted), the
// rest are delivered, and the status is 1; a file with every row valid
// exits 0.
func TestSendSummaryRejectsAndExitStatus(t *testing.T) {
	t.Parallel()
	base, sink := sendServer(t)
	const rows = 250
	file := jsonlRows(t, rows, map[int]string{
		3:   `{"To":"not an address","Subject":"x","Body":"y"}`,
		100: "",
		101: `{"To":"user101@example.org","Subject":"bad\u0007subject","Body":"y"}`,
		249: `{"To":"user249@example.org","Subject":"x","Body":"y","Attachments":[{"FileName":"../a","ContentData":"eA=="}]}`,
	})
	rejects := filepath.Join(t.TempDir(), "rejects.csv")
	r := runSend(t, base, "-file", file, "-from", "shop@example.com", "-batch", "40", "-rejects", rejects)
	if r.code != 1 {
		t.Errorf("exit status %d; want 1 (rows rejected):\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	// The blank line is not a row.
	if got, want := r.summary(t), map[string]int{"rows": rows - 1, "accepted": rows - 4, "rejected": 3, "not sent": 0}; !reflect.DeepEqual(got, want) {
		t.Errorf("summary = %v; want %v\n%s", got, want, r.stdout)
	}
	f, err := os.Open(rejects)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	recs, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	var got [][2]string
	for _, rec := range recs {
		got = append(got, [2]string{rec[0], rec[1]})
	}
	want := [][2]string{{"line", "field"}, {"4", "To"}, {"102", "Subject"}, {"250", "Attachments[0].FileName"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("rejects (line, field) = %v; want %v\n%v", got, want, recs)
	}
	for _, rec := range recs[1:] {
		if rec[2] == "" || rec[3] == "" {
			t.Errorf("reject %v has no code or message", rec)
		}
	}
	if !strings.Contains(r.stderr, "line 4: rejected: To") {
		t.Errorf("stderr does not name line 4:\n%s", r.stderr)
	}
	// Not a terminal: progress lines, the last one at 100%.
	if !strings.Contains(r.stderr, fmt.Sprintf("sendq send: %d/%d rows (100%%), ", rows-1, rows-1)) {
		t.Errorf("stderr has no final progress line:\n%s", r.stderr)
	}
	copies := waitCopies(t, sink, rows-4)
	if len(copies) != rows-4 || copies["user101@example.org"] != 0 {
		t.Errorf("%d recipients got mail; want %d, and not user101", len(copies), rows-4)
	}

	ok := jsonlRows(t, 30, nil)
	if r := runSend(t, base, "-file", ok, "-from", "shop@example.com", "-batch", "7"); r.code != 0 || r.summary(t)["accepted"] != 30 {
		t.Errorf("a valid file: exit %d; want 0 and 30 accepted:\n%s\n%s", r.code, r.stdout, r.stderr)
	}
}

// Bad input is a message naming the file and line, exit status 2, no stack
// trace, and nothing sent.
func TestSendBadInput(t *testing.T) {
	t.Parallel()
	base, sink := sendServer(t)
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	valid := `{"To":"a@example.org","Subject":"x","Body":"y"}` + "\n"
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"missing file", []string{"-file", filepath.Join(dir, "nope.csv"), "-template", "t"}, "nope.csv: no such file"},
		{"no -file", []string{"-template", "t"}, "-file is required"},
		{"csv without -template", []string{"-file", write("a.csv", "To\na@example.org\n")}, "-template is required for a CSV file"},
		{"bad priority", []string{"-file", write("b.jsonl", valid), "-priority", "urgent"}, `-priority "urgent": want high, normal or bulk`},
		{"malformed CSV", []string{"-file", write("c.csv", "To,Name\na@example.org,A\nb@example.org,B\"x\n"), "-template", "t"},
			`c.csv line 3: column 16: bare " in non-quoted-field`},
		{"field count", []string{"-file", write("d.csv", "To,Name\na@example.org,A\nb@example.org\n"), "-template", "t"},
			"d.csv line 3: wrong number of fields"},
		{"no To column", []string{"-file", write("e.csv", "Email,Name\na@example.org,A\n"), "-template", "t"},
			"e.csv line 1: the header has no To column (it has Email, Name)"},
		{"JSONL not an object", []string{"-file", write("f.jsonl", valid+valid+"\"x\"\n")}, "f.jsonl line 3: not a JSON object"},
		{"JSONL unknown field", []string{"-file", write("g.jsonl", valid+`{"To":"b@example.org","Sbject":"x"}`+"\n")},
			`g.jsonl line 2: not a batch item: json: unknown field "Sbject"`},
	} {
		r := runSend(t, base, tc.args...)
		if r.code != 2 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%s: exit %d, stderr %q; want 2 and %q", tc.name, r.code, r.stderr, tc.want)
		}
	}
	// A key sendq refuses stops the run at once, without showing the key.
	r := runSend(t, base, "-file", write("h.jsonl", valid+valid), "-api-key", "wrong-key")
	if r.code != 1 || !strings.Contains(r.stderr, "401 unauthorized") || !strings.Contains(r.stderr, "check -api-key") ||
		strings.Contains(r.stderr, "wrong-key") {
		t.Errorf("a wrong key: exit %d, stderr %q; want 1, a 401 and no key", r.code, r.stderr)
	}
	// The rejects file may not be the file of rows.
	rowsFile := write("i.jsonl", valid)
	if r := runSend(t, base, "-file", rowsFile, "-rejects", rowsFile); r.code != 2 || !strings.Contains(r.stderr, "the rejects file is the file of rows") {
		t.Errorf("-rejects = -file: exit %d, stderr %q; want 2", r.code, r.stderr)
	}
	if b, _ := os.ReadFile(rowsFile); string(b) != valid {
		t.Errorf("the file of rows was overwritten: %q", b)
	}
	// A bad -from refuses every message for Defaults.From: the run stops
	// at the first batch instead of rejecting every row.
	r = runSend(t, base, "-file", jsonlRows(t, 500, nil), "-from", "not an address", "-batch", "50", "-parallel", "1")
	if sum := r.summary(t); r.code != 1 || !strings.Contains(r.stderr, "every message was refused for Defaults.From (invalid_field)") ||
		sum["rejected"] != 0 || sum["not sent"] != 500 {
		t.Errorf("a bad -from: exit %d, summary %v; want 1, every row not sent, and Defaults.From named\n%s", r.code, sum, r.stderr)
	}
	if n := len(sink.Messages()); n != 0 {
		t.Errorf("bad input delivered %d messages", n)
	}
}

// -h prints the usage and exits 0, without the API key of the
// environment (runSend sets SENDQ_API_KEY).
func TestSendHelp(t *testing.T) {
	t.Parallel()
	r := runSend(t, "http://127.0.0.1:1", "-h")
	if r.code != 0 || !strings.Contains(r.stderr, "Safe to re-run") || !strings.Contains(r.stderr, "-rejects") {
		t.Errorf("sendq send -h: exit %d\n%s", r.code, r.stderr)
	}
	if strings.Contains(r.stderr, sendKey) {
		t.Errorf("sendq send -h prints the API key:\n%s", r.stderr)
	}
}

// parseSend: the flags win over their environment twins; the key comes
// from SENDQ_API_KEY, else the first of SENDQ_API_KEYS (without its From
// limits).
func TestParseSend(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	for _, tc := range []struct {
		name        string
		args        []string
		env         map[string]string
		target, key string
	}{
		{"defaults", []string{"-file", "x.jsonl"}, nil, "http://127.0.0.1:8080", ""},
		{"env", []string{"-file", "x.jsonl"}, map[string]string{"SENDQ_TARGET": "https://sendq.example", "SENDQ_API_KEY": "k-env-000"}, "https://sendq.example", "k-env-000"},
		{"keys", []string{"-file", "x.jsonl"}, map[string]string{"SENDQ_API_KEYS": " k-first-0:@a.com, k-second"}, "http://127.0.0.1:8080", "k-first-0"},
		{"flags", []string{"-file", "x.jsonl", "-target", "http://h:1", "-api-key", "k-flag-00"},
			map[string]string{"SENDQ_TARGET": "https://sendq.example", "SENDQ_API_KEY": "k-env-000"}, "http://h:1", "k-flag-00"},
	} {
		o, err := parseSend(tc.args, env(tc.env), io.Discard)
		if err != nil {
			t.Errorf("%s: parseSend = %v", tc.name, err)
			continue
		}
		if o.target != tc.target || o.apiKey != tc.key {
			t.Errorf("%s: target %q, key %q; want %q, %q", tc.name, o.target, o.apiKey, tc.target, tc.key)
		}
	}
	for _, args := range [][]string{
		{"-file", "x.jsonl", "-batch", "0"}, {"-file", "x.jsonl", "-target", "ftp://h"}, {"-file", "x.jsonl", "extra"}, {"-file", "rows.csv"},
	} {
		if _, err := parseSend(args, env(nil), io.Discard); err == nil {
			t.Errorf("parseSend(%q) = nil error; want one", args)
		}
	}
}

// A CSV file with a template, as the example: each row's columns
// are its TemplateData and arrive rendered; a row with no To, a bad
// address and a record spanning two lines are named by their lines; an
// unknown template is one message and nothing is sent; a column the
// template needs and the file lacks rejects every row naming it.
func TestSendCSVWithTemplate(t *testing.T) {
	t.Parallel()
	base, sink := sendServer(t)
	putTemplate(t, base, "order-shipped", `{"Subject": "Order {{.Order}} shipped", "Html": "<p>Hi {{.Name}}</p>", "Text": "Hi {{.Name}}"}`)
	const rows = 120
	file := csvRows(t, rows, map[int]string{
		4:  ",Nobody,A-4",
		10: "user10@example.org,\"Ten\nLines\",A-10",
		11: "not an address,Eleven,A-11",
	})
	rejects := filepath.Join(t.TempDir(), "rejects.csv")
	r := runSend(t, base, "-template", "order-shipped", "-file", file, "-from", "shop@example.com", "-batch", "25", "-rejects", rejects)
	if r.code != 1 {
		t.Errorf("exit %d; want 1:\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if got, want := r.summary(t), map[string]int{"rows": rows, "accepted": rows - 2, "rejected": 2, "not sent": 0}; !reflect.DeepEqual(got, want) {
		t.Errorf("summary = %v; want %v", got, want)
	}
	raw, err := os.ReadFile(rejects)
	if err != nil {
		t.Fatal(err)
	}
	// Row 4 is line 6; row 10 takes lines 12 and 13, so row 11 is line 14.
	if want := "line,field,code,message\n6,To,missing_recipient,the To column is empty\n14,To,invalid_field,\"\"\"not an address\"\" is not an email address\"\n"; string(raw) != want {
		t.Errorf("rejects file =\n%s\nwant\n%s", raw, want)
	}
	waitCopies(t, sink, rows-2)
	var found bool
	for _, m := range sink.Messages() {
		if m.To[0] == "user10@example.org" {
			found = true
			if !bytes.Contains(m.Data, []byte("Subject: Order A-10 shipped")) || !bytes.Contains(m.Data, []byte("Hi Ten")) {
				t.Errorf("user10's message is not rendered from its row:\n%s", m.Data)
			}
		}
	}
	if !found {
		t.Errorf("user10@example.org got nothing")
	}

	before := len(sink.Messages())
	r = runSend(t, base, "-template", "order-shiped", "-file", file)
	if r.code != 2 || !strings.Contains(r.stderr, `unknown template "order-shiped"`) {
		t.Errorf("an unknown template: exit %d, stderr %q; want 2 and the name", r.code, r.stderr)
	}
	r = runSend(t, base, "-template", "order-shipped", "-template-version", "9", "-file", file)
	if r.code != 2 || !strings.Contains(r.stderr, `template "order-shipped" has no version 9`) {
		t.Errorf("an unknown version: exit %d, stderr %q; want 2 and the version", r.code, r.stderr)
	}

	putTemplate(t, base, "needs-more", `{"Subject": "Order {{.Order}} for {{.Customer}}", "Text": "x"}`)
	r = runSend(t, base, "-template", "needs-more", "-file", csvRows(t, 30, nil), "-from", "shop@example.com", "-batch", "10", "-rejects", rejects)
	if got, want := r.summary(t), map[string]int{"rows": 30, "accepted": 0, "rejected": 30, "not sent": 0}; r.code != 1 || !reflect.DeepEqual(got, want) {
		t.Errorf("a column missing: exit %d, summary %v; want 1 and %v\n%s", r.code, got, want, r.stderr)
	}
	if !strings.Contains(r.stderr, "line 2: rejected: TemplateData.Customer (missing_variable)") {
		t.Errorf("a column missing: stderr does not name line 2 and TemplateData.Customer:\n%s", r.stderr)
	}
	time.Sleep(500 * time.Millisecond)
	if n := len(sink.Messages()); n != before {
		t.Errorf("the refused runs delivered %d messages", n-before)
	}
}

// Redis frozen in the middle of a run: the batches in flight are answered
// 503 (or time out) and tried again with their keys once it is back; the
// run ends with every row accepted and each queued once. (The intake only:
// a worker's tasks caught by the freeze wait for asynq's recovery, which
// took over two minutes here, and is not what this test is about.)
func TestSendRetriesThroughAFrozenRedis(t *testing.T) {
	t.Parallel()
	const rows = 2000
	base, _, rs := sendServerMode(t, "api", "SENDQ_RATE_PER_KEY=600/s")
	file := jsonlRows(t, rows, nil)
	_, wait := startSend(t, base, 300, "-file", file, "-from", "shop@example.com", "-batch", "50", "-parallel", "3",
		"-progress-interval", "100ms", "-retries", "20")
	resume := rs.Pause(t)
	time.Sleep(4 * time.Second) // longer than the intake's 3 s Redis timeout
	resume()
	r := wait()
	if r.code != 0 {
		t.Fatalf("exit %d; want 0:\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if got := r.summary(t); got["accepted"] != rows {
		t.Errorf("summary = %v; want %d accepted", got, rows)
	}
	// The freeze was met: the intake answered batches 503.
	metrics := string(call(t, "GET", base+"/metrics", nil, nil).Body)
	if !regexp.MustCompile(`sendq_http_requests_total\{code="503",route="POST /v1/emails/batch"\} [1-9]`).MatchString(metrics) {
		t.Errorf("no batch was answered 503 during the freeze:\n%s", grepLines(metrics, "sendq_http_requests_total"))
	}
	// Every row is one queued email: none lost, none twice. (A batch's
	// emails are held in chunk tasks of many: count the emails the chunks
	// hold, by their recipients.)
	rdb := rs.Client(t)
	insp := asynq.NewInspectorFromRedisClient(rdb)
	store := queue.NewStore(rdb, 0)
	seen := map[string]int{}
	for _, qn := range queue.DefaultTopology.Queues(queue.PriorityBulk) {
		tasks, err := insp.ListPendingTasks(qn, asynq.PageSize(10000))
		if err != nil && !errors.Is(err, asynq.ErrQueueNotFound) {
			t.Fatal(err)
		}
		for _, info := range tasks {
			if info.Type != queue.TypeSendChunk {
				t.Fatalf("a task of type %s in %s; want chunks only", info.Type, qn)
			}
			c, err := queue.DecodeChunk(info.Payload)
			if err != nil {
				t.Fatal(err)
			}
			for _, id := range c.IDs {
				rec, err := store.Get(context.Background(), id)
				if err != nil || rec.Chunk != c.ID {
					continue // held by another chunk (of a retried batch)
				}
				e, err := queue.DecodeEmail(rec.Payload)
				if err != nil {
					t.Fatal(err)
				}
				seen[e.To[0].Address]++
			}
		}
	}
	if len(seen) != rows {
		t.Errorf("%d rows queued; want %d", len(seen), rows)
	}
	for to, k := range seen {
		if k != 1 {
			t.Errorf("%s queued %d times; want once", to, k)
		}
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range splitLines(s) {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// Ctrl-C: the run stops, says what it sent and that running it again
// sends the rest, and exits 1; running it again does, once.
func TestSendInterruptedThenRerun(t *testing.T) {
	t.Parallel()
	const rows = 2000
	base, sink := sendServer(t, "SENDQ_RATE_PER_KEY=600/s")
	file := jsonlRows(t, rows, nil)
	args := []string{"-file", file, "-from", "shop@example.com", "-batch", "50", "-progress-interval", "100ms"}
	cmd, wait := startSend(t, base, 300, args...)
	_ = cmd.Process.Signal(syscall.SIGINT)
	r := wait()
	sum := r.summary(t)
	if r.code != 1 || !strings.Contains(r.stderr, "stopped: interrupt signal received") || !strings.Contains(r.stderr, "run the same command again") ||
		sum["not sent"] == 0 || sum["accepted"]+sum["not sent"] != rows {
		t.Errorf("interrupted: exit %d, summary %v; want 1, rows not sent and the advice\n%s", r.code, sum, r.stderr)
	}
	r = runSend(t, base, args...)
	if r.code != 0 || r.summary(t)["accepted"] != rows {
		t.Fatalf("the second run: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	copies := waitCopies(t, sink, rows)
	if len(copies) != rows || len(sink.Messages()) != rows {
		t.Errorf("%d messages to %d recipients; want %d, one each", len(sink.Messages()), len(copies), rows)
	}
}

// bulk.Run in process: a batch larger than the API key's rate limit lets
// in at once is refused 429 every time; the run gives up after
// RateLimitPatience and says why, instead of waiting forever.
func TestRunStopsOnABatchOverTheRateBurst(t *testing.T) {
	t.Parallel()
	base, _ := sendServer(t, "SENDQ_RATE_PER_KEY=20/s")
	c, err := client.New(base, sendKey, client.WithRetries(1), client.WithBackoff(50*time.Millisecond, 100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// A batch larger than the key's burst is refused at once (400
	// batch_over_rate, naming the largest batch), not 429 for ever.
	sum, err := bulk.Run(ctx, bulk.Config{Client: c, File: jsonlRows(t, 60, nil), From: "shop@example.com", BatchSize: 30, Parallel: 1,
		RateLimitWait: 100 * time.Millisecond, RateLimitPatience: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if sum.OK() || sum.Accepted != 0 || sum.NotSent != 60 || sum.Err == nil ||
		!strings.Contains(sum.Err.Error(), "batch_over_rate") || !strings.Contains(sum.Err.Error(), "at most 20") {
		t.Errorf("Run = %+v; want nothing sent and batch_over_rate naming batches of at most 20", sum)
	}
	// Batches within the limit pass.
	sum, err = bulk.Run(ctx, bulk.Config{Client: c, File: jsonlRows(t, 60, nil), From: "shop@example.com", BatchSize: 15, Parallel: 2,
		RateLimitWait: 100 * time.Millisecond})
	if err != nil || !sum.OK() || sum.Accepted != 60 {
		t.Errorf("Run with batches of 15 = %+v, %v; want 60 accepted", sum, err)
	}
}
