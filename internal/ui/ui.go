// Package ui serves the asynq web console (github.com/hibiken/asynqmon) at
// /ui/, behind sendq's API keys and usable offline.
//
// asynqmon's index page links its fonts from fonts.googleapis.com; the
// handler strips every external <link> and <script> from the HTML it serves
// and sends a Content-Security-Policy that only allows the page's own
// origin, so a browser never fetches anything from the internet. The page
// falls back to the system sans-serif font; its icons are inline SVG and
// need no font.
//
// A request is authorised by a key, found in this order:
//
//   - "?key=KEY" on a GET: if the key is valid the handler stores it in an
//     HttpOnly, SameSite=Strict cookie (sendq_ui_key, Path=/ui) and
//     redirects to /ui/, so the key leaves the address bar at once;
//   - "Authorization: Bearer KEY", for scripts;
//   - the sendq_ui_key cookie, which a browser sends with every later
//     request, including the console's own API calls.
//
// Anything else gets 401 with sendq's JSON error body. Keys are never
// logged.
package ui

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/hibiken/asynqmon"
	"github.com/redis/go-redis/v9"
)

// Path is where the handler must be mounted: mux.Handle(ui.Path, h).
const Path = "/ui/"

// rootPath is Path without its trailing slash, as asynqmon wants it.
const rootPath = "/ui"

// CookieName is the cookie that carries the key after a "?key=" login.
const CookieName = "sendq_ui_key"

// Options configures the handler.
type Options struct {
	// CheckKey reports whether key may use the console. It is called with
	// the key from "?key=", the Bearer header or the cookie, and must
	// compare in constant time (producer.KeyChecker does).
	//
	// Required unless Anonymous is true.
	CheckKey func(key string) bool

	// Anonymous lets anyone who reaches the handler use the console, with
	// no key. It only takes effect when CheckKey is nil, and is meant for
	// the keyless development setup where the API itself is open.
	//
	// If unset or false, a nil CheckKey is an error.
	Anonymous bool

	// AllowWrites lets the console pause queues and run, archive, cancel
	// or delete tasks. asynqmon enforces it on its API (any method but
	// GET is refused with 405) and hides the buttons.
	//
	// If unset or false, the console is read-only. (A field named
	// ReadOnly could not default to true.)
	AllowWrites bool

	// SecureCookie marks the sendq_ui_key cookie Secure even when the
	// request itself came over plain HTTP, as it does behind a proxy that
	// terminates TLS.
	//
	// If unset or false, the cookie is Secure only on TLS requests.
	SecureCookie bool

	// CookieMaxAge is how long a browser keeps the cookie.
	//
	// If unset or zero, 12 hours is used.
	CookieMaxAge time.Duration
}

func (o *Options) validate() error {
	if o.CheckKey == nil && !o.Anonymous {
		return errors.New("ui: CheckKey is required unless Anonymous is set")
	}
	if o.CookieMaxAge < 0 {
		return fmt.Errorf("ui: CookieMaxAge is %v; it must not be negative", o.CookieMaxAge)
	}
	if o.CookieMaxAge == 0 {
		o.CookieMaxAge = 12 * time.Hour
	}
	return nil
}

// Handler serves the console. Mount it at Path.
type Handler struct {
	opts Options
	mon  http.Handler
}

// New returns the console for the asynq queues in rdb.
//
// asynqmon v0.7.2 takes only an asynq.RedisConnOpt, not a client; New
// hands it one whose MakeRedisClient returns rdb itself, so the console
// shares rdb's pool and topology (single server, Sentinel or Cluster).
// The handler never closes rdb; the caller does, after the HTTP server
// has stopped.
func New(rdb redis.UniversalClient, opts Options) (*Handler, error) {
	if rdb == nil {
		return nil, errors.New("ui: redis client is nil")
	}
	if err := opts.validate(); err != nil {
		return nil, err
	}
	mon := asynqmon.New(asynqmon.Options{
		RootPath:     rootPath,
		RedisConnOpt: sharedClient{rdb},
		ReadOnly:     !opts.AllowWrites,
	})
	// mon.Close is deliberately never called: it would close rdb.
	return &Handler{opts: opts, mon: mon}, nil
}

// sharedClient is an asynq.RedisConnOpt that hands out an existing client.
type sharedClient struct{ rdb redis.UniversalClient }

func (c sharedClient) MakeRedisClient() any { return c.rdb }

// ServeHTTP authorises r, then serves asynqmon's page, assets or API.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h.opts.CheckKey != nil { // nil only when Anonymous
		if r.URL.Query().Has("key") && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
			h.login(w, r)
			return
		}
		if !h.authorised(r) {
			unauthorised(w)
			return
		}
	}
	h.serve(w, r)
}

// login turns "?key=KEY" into the cookie and redirects to the console.
func (h *Handler) login(w http.ResponseWriter, r *http.Request) {
	key := r.URL.Query().Get("key")
	if key == "" || !h.opts.CheckKey(key) {
		unauthorised(w)
		return
	}
	http.SetCookie(w, &http.Cookie{
		Name:     CookieName,
		Value:    key,
		Path:     rootPath,
		MaxAge:   int(h.opts.CookieMaxAge / time.Second),
		HttpOnly: true,
		Secure:   h.opts.SecureCookie || r.TLS != nil,
		SameSite: http.SameSiteStrictMode,
	})
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Referrer-Policy", "no-referrer")
	http.Redirect(w, r, Path, http.StatusSeeOther)
}

// authorised reports whether r carries a valid key in its Authorization
// header or its cookie.
func (h *Handler) authorised(r *http.Request) bool {
	if scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " "); ok && strings.EqualFold(scheme, "Bearer") {
		token = strings.TrimSpace(token)
		return token != "" && h.opts.CheckKey(token)
	}
	c, err := r.Cookie(CookieName)
	return err == nil && c.Value != "" && h.opts.CheckKey(c.Value)
}

func unauthorised(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("WWW-Authenticate", `Bearer realm="sendq"`)
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusUnauthorized)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{
		"code":    "unauthorized",
		"message": "missing or invalid key: send \"Authorization: Bearer KEY\", or open /ui/?key=KEY in a browser",
		"field":   "Authorization",
	}})
}

// csp allows only the console's own origin. asynqmon's index inlines its
// webpack runtime and flags, and Material-UI injects <style> elements, so
// inline scripts and styles must be allowed.
const csp = "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; " +
	"img-src 'self' data:; font-src 'self' data:; connect-src 'self'; " +
	"base-uri 'self'; form-action 'self'; frame-ancestors 'none'"

// serve passes r to asynqmon. Its API and hashed static assets go through
// untouched; everything else may be the index page (asynqmon answers any
// unknown path with it, for client-side routing), so it is buffered and,
// if it is HTML, stripped of external references.
func (h *Handler) serve(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Security-Policy", csp)
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if strings.HasPrefix(r.URL.Path, rootPath+"/api/") || strings.HasPrefix(r.URL.Path, rootPath+"/static/") {
		h.mon.ServeHTTP(w, r)
		return
	}
	rec := &recorder{header: http.Header{}, code: http.StatusOK}
	h.mon.ServeHTTP(rec, r)
	body := rec.body.Bytes()
	for k, v := range rec.header {
		w.Header()[k] = v
	}
	if rec.header.Get("Content-Type") == "" || strings.HasPrefix(rec.header.Get("Content-Type"), "text/html") {
		if ct := http.DetectContentType(body); strings.HasPrefix(ct, "text/html") {
			body = rewriteIndex(body)
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			w.Header().Set("Cache-Control", "no-store")
		}
	}
	w.Header().Del("Content-Length")
	w.WriteHeader(rec.code)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
}

// recorder buffers a response from asynqmon.
type recorder struct {
	header http.Header
	body   bytes.Buffer
	code   int
	wrote  bool
}

func (r *recorder) Header() http.Header { return r.header }

func (r *recorder) WriteHeader(code int) {
	if !r.wrote {
		r.code, r.wrote = code, true
	}
}

func (r *recorder) Write(b []byte) (int, error) {
	r.wrote = true
	return r.body.Write(b)
}

// rewriteIndex makes asynqmon's index page offline- and auth-friendly:
// external references go, and the web app manifest, which browsers fetch
// without cookies by default, is fetched with them.
func rewriteIndex(html []byte) []byte {
	html = StripExternal(html)
	return bytes.ReplaceAll(html, []byte(`<link rel="manifest" `), []byte(`<link rel="manifest" crossorigin="use-credentials" `))
}

// externalRef matches a <link> or <script> element whose href or src is an
// absolute (http:, https:) or protocol-relative (//host) URL, with the
// </script> that closes it.
var externalRef = regexp.MustCompile(`(?is)<(link|script)\b[^>]*\b(?:href|src)\s*=\s*["']?(?:https?:)?//[^>]*>(?:\s*</script\s*>)?`)

// StripExternal removes from an HTML document every <link> and <script>
// that refers to another host, such as asynqmon's Google Fonts
// stylesheets.
func StripExternal(html []byte) []byte {
	return externalRef.ReplaceAll(html, nil)
}
