package ui

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/producer"
	"github.com/sendq/sendq/queue"
)

const testKey = "ui-test-key-0123456789"

type testBundle struct {
	rdb *redis.Client
	srv *httptest.Server
	// client does not follow redirects, so tests see the 303.
	client *http.Client
}

// setup starts a private Redis with a few emails queued and serves the
// console with opts (CheckKey defaults to accepting testKey) on 127.0.0.1.
func setup(t *testing.T, opts Options) *testBundle {
	t.Helper()
	rdb := redistest.Start(t).Client(t)
	enqueueEmails(t, rdb)
	if opts.CheckKey == nil && !opts.Anonymous {
		opts.CheckKey = mustChecker("other-key-xxxxxxxx," + testKey + ":@example.com")
	}
	h, err := New(rdb, opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	mux := http.NewServeMux()
	mux.Handle(Path, h)
	srv := httptest.NewServer(mux) // listens on 127.0.0.1
	t.Cleanup(srv.Close)
	return &testBundle{
		rdb: rdb, srv: srv,
		client: &http.Client{
			Timeout:       10 * time.Second,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}
}

// enqueueEmails queues three pending emails and one scheduled one in the
// "emails" queue.
func enqueueEmails(t *testing.T, rdb redis.UniversalClient) {
	t.Helper()
	c := asynq.NewClientFromRedisClient(rdb)
	for i := range 4 {
		task, err := queue.NewTask(&queue.Email{
			ID:      fmt.Sprintf("ui-test-%d", i),
			From:    queue.Address{Address: "from@example.com"},
			To:      []queue.Address{{Address: "to@example.com"}},
			Subject: "ui test",
		})
		if err != nil {
			t.Fatalf("NewTask: %v", err)
		}
		var opts []asynq.Option
		if i == 3 {
			opts = append(opts, asynq.ProcessIn(time.Hour))
		}
		if _, err := c.Enqueue(task, opts...); err != nil {
			t.Fatalf("Enqueue: %v", err)
		}
	}
}

func (b *testBundle) get(t *testing.T, path string, mod func(*http.Request)) (*http.Response, []byte) {
	t.Helper()
	return b.do(t, http.MethodGet, path, mod)
}

func (b *testBundle) do(t *testing.T, method, path string, mod func(*http.Request)) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, b.srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if mod != nil {
		mod(req)
	}
	resp, err := b.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return resp, body
}

func bearer(key string) func(*http.Request) {
	return func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+key) }
}

func withCookie(value string) func(*http.Request) {
	return func(r *http.Request) { r.AddCookie(&http.Cookie{Name: CookieName, Value: value}) }
}

func TestNewValidates(t *testing.T) {
	t.Parallel()
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}) // never dialled
	t.Cleanup(func() { _ = rdb.Close() })
	ok := func(string) bool { return true }
	tests := []struct {
		name    string
		rdb     redis.UniversalClient
		opts    Options
		wantErr bool
	}{
		{"keys", rdb, Options{CheckKey: ok}, false},
		{"anonymous", rdb, Options{Anonymous: true}, false},
		{"no auth", rdb, Options{}, true},
		{"nil redis", nil, Options{CheckKey: ok}, true},
		{"negative max age", rdb, Options{CheckKey: ok, CookieMaxAge: -time.Second}, true},
	}
	for _, tt := range tests {
		_, err := New(tt.rdb, tt.opts)
		if got := err != nil; got != tt.wantErr {
			t.Errorf("%s: New error = %v; want error %v", tt.name, err, tt.wantErr)
		}
	}
}

// mustChecker builds a CheckKey from an SENDQ_API_KEYS value, as main does.
func mustChecker(s string) func(string) bool {
	keys, err := producer.ParseAPIKeys(s)
	if err != nil {
		panic(err)
	}
	return producer.KeyChecker(keys)
}

func TestUnauthorized(t *testing.T) {
	t.Parallel()
	b := setup(t, Options{})
	tests := []struct {
		name string
		path string
		mod  func(*http.Request)
	}{
		{"no key", "/ui/", nil},
		{"no key api", "/ui/api/queues", nil},
		{"no key asset", "/ui/favicon.ico", nil},
		{"bad query key", "/ui/?key=wrong-key-123", nil},
		{"empty query key", "/ui/?key=", nil},
		{"bad bearer", "/ui/api/queues", bearer("wrong-key-123")},
		{"bad cookie", "/ui/api/queues", withCookie("wrong-key-123")},
		{"bad bearer beats good cookie", "/ui/api/queues", func(r *http.Request) {
			bearer("wrong-key-123")(r)
			withCookie(testKey)(r)
		}},
	}
	for _, tt := range tests {
		resp, body := b.get(t, tt.path, tt.mod)
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s: GET %s = %s; want 401", tt.name, tt.path, resp.Status)
			continue
		}
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("%s: Content-Type = %q; want application/json", tt.name, ct)
		}
		if c := resp.Header.Get("Set-Cookie"); c != "" {
			t.Errorf("%s: 401 sets a cookie: %q", tt.name, c)
		}
		var got struct {
			Error struct{ Code, Message, Field string }
		}
		if err := json.Unmarshal(body, &got); err != nil {
			t.Errorf("%s: body %q is not JSON: %v", tt.name, body, err)
			continue
		}
		if got.Error.Code != "unauthorized" || got.Error.Field != "Authorization" || got.Error.Message == "" {
			t.Errorf("%s: error = %+v; want code unauthorized, field Authorization and a message", tt.name, got.Error)
		}
		if bytes.Contains(body, []byte("wrong-key")) {
			t.Errorf("%s: body echoes the key: %s", tt.name, body)
		}
	}
}

func TestKeyCookieFlow(t *testing.T) {
	t.Parallel()
	b := setup(t, Options{})

	resp, _ := b.get(t, "/ui/?key="+url.QueryEscape(testKey), nil)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/ui/" {
		t.Fatalf("GET /ui/?key=KEY = %s, Location %q; want 303 to /ui/", resp.Status, resp.Header.Get("Location"))
	}
	var cookie *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Name == CookieName {
			cookie = c
		}
	}
	if cookie == nil {
		t.Fatalf("no %s cookie in %q", CookieName, resp.Header.Values("Set-Cookie"))
	}
	if !cookie.HttpOnly || cookie.SameSite != http.SameSiteStrictMode || cookie.Path != "/ui" || cookie.Value != testKey || cookie.MaxAge <= 0 {
		t.Errorf("cookie = %q; want HttpOnly, SameSite=Strict, Path=/ui, a Max-Age and the key", resp.Header.Get("Set-Cookie"))
	}
	if cookie.Secure {
		t.Errorf("cookie is Secure on a plain-HTTP request without SecureCookie")
	}

	for _, tt := range []struct {
		name string
		mod  func(*http.Request)
	}{
		{"cookie", withCookie(cookie.Value)},
		{"bearer", bearer(testKey)},
	} {
		resp, body := b.get(t, "/ui/", tt.mod)
		if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
			t.Errorf("%s: GET /ui/ = %s %q; want 200 text/html", tt.name, resp.Status, resp.Header.Get("Content-Type"))
		}
		if !bytes.Contains(body, []byte(`window.FLAG_ROOT_PATH="\/ui"`)) {
			t.Errorf("%s: index does not set FLAG_ROOT_PATH to /ui:\n%s", tt.name, body)
		}
		resp, body = b.get(t, "/ui/api/queues", tt.mod)
		if resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte(`"queue":"emails"`)) {
			t.Errorf("%s: GET /ui/api/queues = %s %s; want 200 listing the emails queue", tt.name, resp.Status, body)
		}
	}

	t.Run("secure", func(t *testing.T) {
		b := setup(t, Options{SecureCookie: true})
		resp, _ := b.get(t, "/ui/?key="+url.QueryEscape(testKey), nil)
		if c := resp.Cookies(); len(c) != 1 || !c[0].Secure {
			t.Errorf("Set-Cookie = %q; want one Secure cookie", resp.Header.Values("Set-Cookie"))
		}
	})
}

func TestAnonymous(t *testing.T) {
	t.Parallel()
	b := setup(t, Options{Anonymous: true})
	resp, body := b.get(t, "/ui/api/queues", nil)
	if resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte(`"queue":"emails"`)) {
		t.Errorf("GET /ui/api/queues = %s %s; want 200 listing the emails queue", resp.Status, body)
	}
}

func TestReadOnly(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		opts Options
		want int
	}{
		{"default", Options{}, http.StatusMethodNotAllowed},
		{"AllowWrites", Options{AllowWrites: true}, http.StatusNoContent},
	} {
		b := setup(t, tt.opts)
		resp, body := b.do(t, http.MethodPost, "/ui/api/queues/emails:pause", bearer(testKey))
		if resp.StatusCode != tt.want {
			t.Errorf("%s: POST pause = %s %s; want %d", tt.name, resp.Status, body, tt.want)
		}
		paused, err := b.rdb.Exists(context.Background(), "asynq:{emails}:paused").Result()
		if err != nil {
			t.Fatal(err)
		}
		if wantPaused := tt.want == http.StatusNoContent; (paused == 1) != wantPaused {
			t.Errorf("%s: queue paused = %v; want %v", tt.name, paused == 1, wantPaused)
		}
	}
}

// externalAsset finds a stylesheet, script or other linked resource
// loaded from another host.
var externalAsset = regexp.MustCompile(`(?i)<(link|script|img|iframe)\b[^>]*\b(href|src)\s*=\s*["']?(https?:)?//`)

func TestIndexHasNoExternalReferences(t *testing.T) {
	t.Parallel()
	b := setup(t, Options{})
	// asynqmon answers unknown paths (client-side routes) with the index too.
	for _, path := range []string{"/ui/", "/ui/queues/emails", "/ui/servers"} {
		resp, body := b.get(t, path, bearer(testKey))
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s = %s", path, resp.Status)
		}
		if !bytes.Contains(body, []byte(`<div id="root">`)) {
			t.Errorf("GET %s is not asynqmon's index:\n%s", path, body)
		}
		if m := externalAsset.Find(body); m != nil || bytes.Contains(body, []byte("fonts.googleapis")) {
			t.Errorf("GET %s refers to another host (%q):\n%s", path, m, body)
		}
		if !bytes.Contains(body, []byte(`<link rel="manifest" crossorigin="use-credentials"`)) {
			t.Errorf("GET %s: the manifest link does not send the cookie", path)
		}
		if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") {
			t.Errorf("GET %s: Content-Security-Policy = %q; want default-src 'self'", path, csp)
		}
	}
	// Assets are passed through untouched.
	resp, body := b.get(t, "/ui/favicon-32x32.png", bearer(testKey))
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "image/png" || !bytes.HasPrefix(body, pngMagic) {
		t.Errorf("GET /ui/favicon-32x32.png = %s %q; want 200 image/png", resp.Status, resp.Header.Get("Content-Type"))
	}
}

func TestStripExternal(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{`<head><link rel="stylesheet" href="https://fonts.googleapis.com/css?family=Roboto:300&display=swap"/><title>x</title>`, `<head><title>x</title>`},
		{`<link rel="icon" href="/ui/favicon.ico"/>`, `<link rel="icon" href="/ui/favicon.ico"/>`},
		{`<script src="//cdn.example/x.js"></script><script src="/ui/static/a.js"></script>`, `<script src="/ui/static/a.js"></script>`},
		{`<LINK HREF=http://x.example/a.css rel=stylesheet>`, ``},
		{`<script>var u="https://example.com"</script>`, `<script>var u="https://example.com"</script>`},
	}
	for _, tt := range tests {
		if got := string(StripExternal([]byte(tt.in))); got != tt.want {
			t.Errorf("StripExternal(%q) = %q; want %q", tt.in, got, tt.want)
		}
	}
}

var pngMagic = []byte("\x89PNG\r\n\x1a\n")

// TestBrowser loads the console in a real headless Chromium, as an
// operator would: /ui/?key=KEY, the cookie, the redirect, then the queue
// table filled by the console's own API calls. Every host but 127.0.0.1
// is made unresolvable, so the page must render offline.
func TestBrowser(t *testing.T) {
	t.Parallel()
	bin, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("SENDQ_TEST_REQUIRE_BROWSER") != "" {
			t.Fatalf("chromium not found and SENDQ_TEST_REQUIRE_BROWSER is set: %v", err)
		}
		t.Skip("chromium not found (apt-get install chromium); set SENDQ_TEST_REQUIRE_BROWSER=1 to make this a failure")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	b := setup(t, Options{})
	start := time.Now()
	page := b.srv.URL + "/ui/?key=" + url.QueryEscape(testKey)

	dir := t.TempDir()
	png := filepath.Join(dir, "ui.png")
	_, logs := runChromium(ctx, t, bin, filepath.Join(dir, "profile-shot"),
		"--screenshot="+png, "--window-size=1280,900", "--virtual-time-budget=10000", page)
	shot, err := os.ReadFile(png)
	if err != nil {
		t.Fatalf("no screenshot: %v", err)
	}
	if !bytes.HasPrefix(shot, pngMagic) {
		t.Fatalf("%s is not a PNG", png)
	}

	// Chromium logs the page's console: a blocked (CSP) or failed load
	// would show there.
	for _, line := range strings.Split(string(logs), "\n") {
		if strings.Contains(line, ":CONSOLE") && regexp.MustCompile(`(?i)refused|fail|err_|error`).MatchString(line) {
			t.Errorf("browser console: %s", line)
		}
	}
	dom, _ := runChromium(ctx, t, bin, filepath.Join(dir, "profile-dom"),
		"--dump-dom", "--window-size=1280,900", "--virtual-time-budget=10000", page)
	// The dashboard's queue table: a row whose first cell names the queue.
	row := regexp.MustCompile(`<tr[^>]*>\s*<t[hd][^>]*>(?:<[^>]*>)*emails<`)
	if !row.Match(dom) {
		t.Fatalf("rendered DOM has no table row for the emails queue:\n%s", dom)
	}
	if bytes.Contains(dom, []byte("fonts.googleapis")) {
		t.Errorf("rendered DOM refers to fonts.googleapis")
	}
	if keep := os.Getenv("SENDQ_TEST_KEEP_SCREENSHOT"); keep != "" {
		if err := os.WriteFile(keep, shot, 0o644); err != nil {
			t.Errorf("keep screenshot: %v", err)
		}
	}
	t.Logf("browser: %d-byte screenshot and the queue table in %v", len(shot), time.Since(start).Round(time.Millisecond))
}

// runChromium runs one headless Chromium with its own profile and returns
// its stdout. Chromium starts helper processes, so it runs in its own
// process group, and the whole group is killed when ctx ends or when the
// browser exits, whichever comes first.
func runChromium(ctx context.Context, t *testing.T, bin, profile string, args ...string) (stdout, stderr []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	args = append([]string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
		"--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
		"--user-data-dir=" + profile, "--enable-logging=stderr", "--v=0",
		// Offline: nothing but loopback resolves.
		"--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
	}, args...)
	cmd := exec.CommandContext(ctx, bin, args...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	err := cmd.Wait()
	// Reap any helper left behind; ESRCH means none was.
	if kerr := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); kerr != nil && !errors.Is(kerr, syscall.ESRCH) {
		t.Logf("kill chromium group: %v", kerr)
	}
	if err != nil {
		t.Fatalf("chromium %s: %v\nstderr:\n%s", strings.Join(args, " "), err, errOut.Bytes())
	}
	return out.Bytes(), errOut.Bytes()
}
