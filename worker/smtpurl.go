package worker

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	gomail "github.com/wneessen/go-mail"
)

// TLS modes of an SMTP relay.
const (
	TLSStartTLS = "starttls" // mandatory STARTTLS: the default for smtp://
	TLSImplicit = "implicit" // TLS from the first byte: smtps://
	TLSNone     = "none"     // plain text, only when asked for
)

// Relay is a parsed SENDQ_SMTP_URL. Its String method never shows the
// password.
type Relay struct {
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
// pipelining=false (never pipeline commands).
// User and password must be URL-escaped.
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
	return r, nil
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
	u.RawQuery = q.Encode()
	return u.String()
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
