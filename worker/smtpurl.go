package worker

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/go-redis/redis_rate/v10"
	gomail "github.com/wneessen/go-mail"

	"github.com/sendq/sendq/queue"
)

// TLS modes of an SMTP relay.
const (
	TLSStartTLS = "starttls" // mandatory STARTTLS: the default for smtp://
	TLSImplicit = "implicit" // TLS from the first byte: smtps://
	TLSNone     = "none"     // plain text, only when asked for
)

// Relay is one parsed relay of SENDQ_SMTP_URL. Its String method never
// shows the password.
type Relay struct {
	// Name is the relay's name in SENDQ_SMTP_ROUTES, the status body and
	// the relay label of metrics (name=); ParseRelays gives one to a relay
	// without: primary, secondary, relay3, ...
	Name        string
	Host        string
	Port        int
	Username    string
	Password    string
	TLS         string
	SkipVerify  bool
	Auth        string // plain, login, cram-md5, scram-sha-256, xoauth2, auto; empty without a username
	HELO        string
	DialTimeout time.Duration
	// NoPipelining sends one command per round trip even when the server
	// offers PIPELINING (for a relay or middlebox that announces it and
	// mishandles it; Postfix's smtp_discard_ehlo_keywords=pipelining).
	NoPipelining bool
	// PoolSize, when not zero, is this relay's most open connections per
	// worker process (pool_size=), instead of the worker's Pool.Size.
	PoolSize int
	// Rate, when not nil, limits transactions to this relay across every
	// worker process (rate=14/s), instead of the worker's SMTPRate.
	Rate *redis_rate.Limit
	// RootCAs, when set, replaces the system roots (tests trust a private CA).
	RootCAs *x509.CertPool
}

// ParseRelay parses an SMTP URL:
//
//	smtp://user:pass@host:587?tls=starttls   (tls=starttls is the default)
//	smtps://host:465                          (TLS from the first byte)
//	smtp://host:25?tls=none                   (plain text, only when asked)
//
// Query parameters: tls (starttls, implicit, none), tls_skip_verify=true,
// auth (plain, login, cram-md5, scram-sha-1, scram-sha-256, xoauth2, auto;
// default plain when a user is given), helo, dial_timeout (a Go duration),
// pipelining=false (never pipeline commands), name (the relay's name: up to
// 32 letters, digits, '.', '_' or '-'), pool_size (a whole number) and rate
// (14/s, 600/m, 50000/h). User and password must be URL-escaped.
func ParseRelay(raw string) (*Relay, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("SMTP URL does not parse (check that user and password are URL-escaped)")
	}
	r := &Relay{Host: u.Hostname(), DialTimeout: 15 * time.Second}
	q := u.Query()
	switch u.Scheme {
	case "smtp":
		r.TLS, r.Port = TLSStartTLS, 587
	case "smtps":
		r.TLS, r.Port = TLSImplicit, 465
	default:
		return nil, fmt.Errorf("SMTP URL scheme %q is not smtp or smtps", u.Scheme)
	}
	if t := q.Get("tls"); t != "" {
		switch t {
		case TLSStartTLS, TLSImplicit, TLSNone:
			r.TLS = t
		default:
			return nil, fmt.Errorf("SMTP URL tls=%q is not starttls, implicit or none", t)
		}
		if u.Scheme == "smtps" && t != TLSImplicit {
			return nil, fmt.Errorf("smtps:// is TLS from the first byte; tls=%s contradicts it", t)
		}
	}
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n <= 0 || n > 65535 {
			return nil, fmt.Errorf("SMTP URL port %q is not a port", p)
		}
		r.Port = n
	}
	if r.Host == "" {
		return nil, fmt.Errorf("SMTP URL has no host")
	}
	if u.User != nil {
		r.Username = u.User.Username()
		r.Password, _ = u.User.Password()
		r.Auth = "plain"
	}
	if a := strings.ToLower(q.Get("auth")); a != "" {
		if _, ok := authTypes[a]; !ok {
			return nil, fmt.Errorf("SMTP URL auth=%q is not one of plain, login, cram-md5, scram-sha-1, scram-sha-256, xoauth2, auto", a)
		}
		if r.Username == "" {
			return nil, fmt.Errorf("SMTP URL auth=%s needs a user", a)
		}
		r.Auth = a
	}
	r.SkipVerify = q.Get("tls_skip_verify") == "true"
	r.HELO = q.Get("helo")
	switch q.Get("pipelining") {
	case "", "true":
	case "false":
		r.NoPipelining = true
	default:
		return nil, fmt.Errorf("SMTP URL pipelining=%q is not true or false", q.Get("pipelining"))
	}
	if d := q.Get("dial_timeout"); d != "" {
		v, err := time.ParseDuration(d)
		if err != nil || v <= 0 {
			return nil, fmt.Errorf("SMTP URL dial_timeout=%q is not a positive duration", d)
		}
		r.DialTimeout = v
	}
	if n := q.Get("name"); n != "" {
		if !relayName.MatchString(n) {
			return nil, fmt.Errorf("SMTP URL name=%q is not 1 to 32 letters, digits, '.', '_' or '-'", n)
		}
		r.Name = n
	}
	if v := q.Get("pool_size"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("SMTP URL pool_size=%q is not a whole number of at least 1", v)
		}
		r.PoolSize = n
	}
	if v := q.Get("rate"); v != "" {
		l, err := queue.ParseRate(v)
		if err != nil {
			return nil, fmt.Errorf("SMTP URL rate: %w", err)
		}
		r.Rate = &l
	}
	return r, nil
}

// relayName is what a relay's name may be: it is a metric label value, so
// short and plain.
var relayName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$`)

// MaxRelays is the most relays SENDQ_SMTP_URL may list.
const MaxRelays = 16

// relaySep is where one relay's URL ends and the next begins: a comma
// followed by a scheme. A comma anywhere else (an unescaped one in a
// password) stays part of its URL, so a single URL parses as before.
var relaySep = regexp.MustCompile(`,\s*(?i:smtps?://)`)

// ParseRelays parses SENDQ_SMTP_URL: one relay URL (ParseRelay), or
// several separated by commas, in failover order:
//
//	smtp://mx1:587?name=primary,smtps://u:p@mx2:465?name=backup
//
// A relay without name= is named by its place: primary, secondary, relay3,
// relay4 and so on. Names must differ.
func ParseRelays(raw string) ([]*Relay, error) {
	var parts []string
	start := 0
	for _, loc := range relaySep.FindAllStringIndex(raw, -1) {
		parts = append(parts, raw[start:loc[0]])
		start = loc[0] + 1
	}
	parts = append(parts, raw[start:])
	if len(parts) > MaxRelays {
		return nil, fmt.Errorf("%d relays; at most %d", len(parts), MaxRelays)
	}
	relays := make([]*Relay, 0, len(parts))
	for i, p := range parts {
		r, err := ParseRelay(strings.TrimSpace(p))
		if err != nil {
			if len(parts) == 1 {
				return nil, err
			}
			return nil, fmt.Errorf("relay %d: %w", i+1, err)
		}
		relays = append(relays, r)
	}
	if err := nameRelays(relays); err != nil {
		return nil, err
	}
	return relays, nil
}

// nameRelays gives each relay without a name the name of its place, and
// refuses two relays of the same name.
func nameRelays(relays []*Relay) error {
	seen := make(map[string]bool, len(relays))
	for i, r := range relays {
		if r.Name == "" {
			r.Name = defaultRelayName(i)
		}
		if seen[r.Name] {
			return fmt.Errorf("two relays are named %q; give each a different name=", r.Name)
		}
		seen[r.Name] = true
	}
	return nil
}

func defaultRelayName(i int) string {
	switch i {
	case 0:
		return "primary"
	case 1:
		return "secondary"
	default:
		return "relay" + strconv.Itoa(i+1)
	}
}

var authTypes = map[string]gomail.SMTPAuthType{
	"plain":         gomail.SMTPAuthPlain,
	"login":         gomail.SMTPAuthLogin,
	"cram-md5":      gomail.SMTPAuthCramMD5,
	"scram-sha-1":   gomail.SMTPAuthSCRAMSHA1,
	"scram-sha-256": gomail.SMTPAuthSCRAMSHA256,
	"xoauth2":       gomail.SMTPAuthXOAUTH2,
	"auto":          gomail.SMTPAuthAutoDiscover,
}

// Addr is host:port.
func (r *Relay) Addr() string { return net.JoinHostPort(r.Host, strconv.Itoa(r.Port)) }

// String describes the relay without its password.
func (r *Relay) String() string {
	u := url.URL{Scheme: "smtp", Host: r.Addr()}
	if r.TLS == TLSImplicit {
		u.Scheme = "smtps"
	}
	if r.Username != "" {
		u.User = url.User(r.Username)
	}
	q := url.Values{}
	if r.TLS != TLSImplicit {
		q.Set("tls", r.TLS)
	}
	if r.Auth != "" {
		q.Set("auth", r.Auth)
	}
	if r.NoPipelining {
		q.Set("pipelining", "false")
	}
	if r.SkipVerify {
		// The log line of the relay must show that certificates are not
		// checked: it is the first thing to look for when TLS is in doubt.
		q.Set("tls_skip_verify", "true")
	}
	if r.Name != "" {
		q.Set("name", r.Name)
	}
	if r.PoolSize > 0 {
		q.Set("pool_size", strconv.Itoa(r.PoolSize))
	}
	if r.Rate != nil {
		q.Set("rate", formatRate(*r.Rate))
	}
	u.RawQuery = q.Encode()
	return u.String()
}

func formatRate(l redis_rate.Limit) string {
	unit := map[time.Duration]string{time.Second: "s", time.Minute: "m", time.Hour: "h"}[l.Period]
	if unit == "" {
		return l.String()
	}
	return strconv.Itoa(l.Rate) + "/" + unit
}

// client returns a go-mail client configured for the relay. It is used only
// as a dialer: each pooled connection is its own *smtp.Client.
func (r *Relay) client(timeout time.Duration) (*gomail.Client, error) {
	tlsCfg := &tls.Config{ServerName: r.Host, MinVersion: tls.VersionTLS12, InsecureSkipVerify: r.SkipVerify} //nolint:gosec // only when tls_skip_verify=true
	tlsCfg.RootCAs = r.RootCAs
	opts := []gomail.Option{
		gomail.WithPort(r.Port),
		gomail.WithTimeout(timeout),
		gomail.WithTLSConfig(tlsCfg),
	}
	switch r.TLS {
	case TLSImplicit:
		opts = append(opts, gomail.WithSSL())
	case TLSNone:
		opts = append(opts, gomail.WithTLSPolicy(gomail.NoTLS))
	default:
		opts = append(opts, gomail.WithTLSPolicy(gomail.TLSMandatory))
	}
	if r.Username != "" {
		opts = append(opts, gomail.WithSMTPAuth(authTypes[r.Auth]),
			gomail.WithUsername(r.Username), gomail.WithPassword(r.Password))
	}
	if r.HELO != "" {
		opts = append(opts, gomail.WithHELO(r.HELO))
	}
	c, err := gomail.NewClient(r.Host, opts...)
	if err != nil {
		return nil, fmt.Errorf("smtp client: %w", err)
	}
	return c, nil
}
