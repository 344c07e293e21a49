package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// Config is everything sendq reads from its environment and flags.
type Config struct {
	RedisURL        string
	SMTPURL         string
	HTTPAddr        string
	APIKeys         string
	AllowedFrom     string
	DefaultFrom     string
	MaxMessageBytes int64
	MaxRecipients   int
	PoolSize        int
	IdleTimeout     time.Duration
	MaxConnAge      time.Duration
	SMTPTimeout     time.Duration
	Concurrency     int
	RetryBase       time.Duration
	RetryMax        time.Duration
	MaxAttempts     int
	MaxAge          time.Duration
	ShutdownTimeout time.Duration
	Retention       time.Duration
	OutboxDir       string
	LogFormat       string
	LogLevel        string
}

// setting is one configuration item: an environment variable and its flag
// twin. The flag wins over the variable, the variable over the default.
type setting struct {
	env, flag, def, help string
	set                  func(c *Config, v string) error
	secret               bool
}

func str(dst func(*Config) *string) func(*Config, string) error {
	return func(c *Config, v string) error { *dst(c) = v; return nil }
}

func integer(name string, dst func(*Config) *int, min int) func(*Config, string) error {
	return func(c *Config, v string) error {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < min {
			return fmt.Errorf("%s=%q must be a whole number of at least %d", name, v, min)
		}
		*dst(c) = n
		return nil
	}
}

func duration(name string, dst func(*Config) *time.Duration) func(*Config, string) error {
	return func(c *Config, v string) error {
		d, err := time.ParseDuration(strings.TrimSpace(v))
		if err != nil || d <= 0 {
			return fmt.Errorf("%s=%q must be a positive duration such as 30s or 1h", name, v)
		}
		*dst(c) = d
		return nil
	}
}

// settings is the configuration table; README.md shows the same table.
var settings = []setting{
	{env: "REDIS_URL", flag: "redis-url", help: "redis://[user:pass@]host:port/db, rediss://, redis-sentinel://h1,h2/db?master=NAME or redis-cluster://h1,h2; unset: an embedded in-memory Redis (nothing survives a restart)",
		set: str(func(c *Config) *string { return &c.RedisURL }), secret: true},
	{env: "SENDQ_SMTP_URL", flag: "smtp-url", help: "smtp://user:pass@host:587?tls=starttls, smtps://host:465 or smtp://host:25?tls=none; unset: an embedded SMTP server that writes .eml files to the outbox dir",
		set: str(func(c *Config) *string { return &c.SMTPURL }), secret: true},
	{env: "SENDQ_HTTP_ADDR", flag: "http-addr", def: ":8080", help: "HTTP listen address (API, /healthz, /readyz, /metrics)",
		set: str(func(c *Config) *string { return &c.HTTPAddr })},
	{env: "SENDQ_API_KEYS", flag: "api-keys", help: "comma-separated API keys for Authorization: Bearer KEY, each optionally KEY:@a.com|ops@b.com to limit its From; unset: no auth",
		set: str(func(c *Config) *string { return &c.APIKeys }), secret: true},
	{env: "SENDQ_ALLOWED_FROM", flag: "allowed-from", help: "comma-separated addresses (a@x.com) or domains (@x.com) allowed as From; unset: any",
		set: str(func(c *Config) *string { return &c.AllowedFrom })},
	{env: "SENDQ_DEFAULT_FROM", flag: "default-from", help: "From used when a request has none",
		set: str(func(c *Config) *string { return &c.DefaultFrom })},
	{env: "SENDQ_MAX_MESSAGE_BYTES", flag: "max-message-bytes", def: "26214400", help: "largest request body accepted",
		set: func(c *Config, v string) error {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil || n < 1024 {
				return fmt.Errorf("SENDQ_MAX_MESSAGE_BYTES=%q must be a whole number of at least 1024", v)
			}
			c.MaxMessageBytes = n
			return nil
		}},
	{env: "SENDQ_MAX_RECIPIENTS", flag: "max-recipients", def: "100", help: "most recipients across To, CC and Bcc",
		set: integer("SENDQ_MAX_RECIPIENTS", func(c *Config) *int { return &c.MaxRecipients }, 1)},
	{env: "SENDQ_SMTP_POOL_SIZE", flag: "smtp-pool-size", def: "10", help: "most SMTP connections one worker process keeps open",
		set: integer("SENDQ_SMTP_POOL_SIZE", func(c *Config) *int { return &c.PoolSize }, 1)},
	{env: "SENDQ_SMTP_IDLE_TIMEOUT", flag: "smtp-idle-timeout", def: "30s", help: "an SMTP connection idle longer is closed, not reused",
		set: duration("SENDQ_SMTP_IDLE_TIMEOUT", func(c *Config) *time.Duration { return &c.IdleTimeout })},
	{env: "SENDQ_SMTP_MAX_CONN_AGE", flag: "smtp-max-conn-age", def: "5m", help: "an SMTP connection older than this is retired",
		set: duration("SENDQ_SMTP_MAX_CONN_AGE", func(c *Config) *time.Duration { return &c.MaxConnAge })},
	{env: "SENDQ_SMTP_TIMEOUT", flag: "smtp-timeout", def: "20s", help: "bound on one SMTP dial or transaction; must be below the shutdown timeout",
		set: duration("SENDQ_SMTP_TIMEOUT", func(c *Config) *time.Duration { return &c.SMTPTimeout })},
	{env: "SENDQ_WORKER_CONCURRENCY", flag: "worker-concurrency", def: "", help: "emails one worker process handles at once; default 2 x pool size",
		set: integer("SENDQ_WORKER_CONCURRENCY", func(c *Config) *int { return &c.Concurrency }, 1)},
	{env: "SENDQ_RETRY_BASE_DELAY", flag: "retry-base-delay", def: "30s", help: "first retry delay, doubled each retry with jitter",
		set: duration("SENDQ_RETRY_BASE_DELAY", func(c *Config) *time.Duration { return &c.RetryBase })},
	{env: "SENDQ_RETRY_MAX_DELAY", flag: "retry-max-delay", def: "1h", help: "cap on the retry delay",
		set: duration("SENDQ_RETRY_MAX_DELAY", func(c *Config) *time.Duration { return &c.RetryMax })},
	{env: "SENDQ_MAX_ATTEMPTS", flag: "max-attempts", def: "20", help: "delivery attempts before an email is failed",
		set: integer("SENDQ_MAX_ATTEMPTS", func(c *Config) *int { return &c.MaxAttempts }, 1)},
	{env: "SENDQ_MAX_AGE", flag: "max-age", def: "72h", help: "an email not delivered within this is failed (reason expired)",
		set: duration("SENDQ_MAX_AGE", func(c *Config) *time.Duration { return &c.MaxAge })},
	{env: "SENDQ_SHUTDOWN_TIMEOUT", flag: "shutdown-timeout", def: "25s", help: "how long a stopping worker lets in-flight sends finish",
		set: duration("SENDQ_SHUTDOWN_TIMEOUT", func(c *Config) *time.Duration { return &c.ShutdownTimeout })},
	{env: "SENDQ_RETENTION", flag: "retention", def: "24h", help: "how long a sent email stays visible in the status API",
		set: duration("SENDQ_RETENTION", func(c *Config) *time.Duration { return &c.Retention })},
	{env: "SENDQ_OUTBOX_DIR", flag: "outbox-dir", def: "./sendq-outbox", help: "where the embedded SMTP server writes .eml files",
		set: str(func(c *Config) *string { return &c.OutboxDir })},
	{env: "SENDQ_LOG_FORMAT", flag: "log-format", def: "text", help: "text or json",
		set: func(c *Config, v string) error {
			if v != "text" && v != "json" {
				return fmt.Errorf("SENDQ_LOG_FORMAT=%q must be text or json", v)
			}
			c.LogFormat = v
			return nil
		}},
	{env: "SENDQ_LOG_LEVEL", flag: "log-level", def: "info", help: "debug, info, warn or error",
		set: func(c *Config, v string) error {
			switch v {
			case "debug", "info", "warn", "error":
				c.LogLevel = v
				return nil
			}
			return fmt.Errorf("SENDQ_LOG_LEVEL=%q must be debug, info, warn or error", v)
		}},
}

// Load reads the configuration from flags (args) and the environment
// (getenv). It is a pure function: no I/O but writing usage to out.
func Load(name string, args []string, getenv func(string) string, out io.Writer) (*Config, error) {
	c := &Config{}
	fs := flag.NewFlagSet("sendq "+name, flag.ContinueOnError)
	fs.SetOutput(out)
	vals := make([]*string, len(settings))
	for i, s := range settings {
		def := s.def
		if v := getenv(s.env); v != "" {
			def = v
		}
		shown := def
		if s.secret {
			shown = "" // never print a secret in usage
		}
		vals[i] = new(string)
		fs.StringVar(vals[i], s.flag, def, s.help+" (env "+s.env+")")
		if f := fs.Lookup(s.flag); f != nil {
			f.DefValue = shown
		}
		*vals[i] = def
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	var errs []error
	for i, s := range settings {
		if *vals[i] == "" {
			continue
		}
		if err := s.set(c, *vals[i]); err != nil {
			errs = append(errs, err)
		}
	}
	if c.Concurrency == 0 {
		c.Concurrency = 2 * c.PoolSize
	}
	if c.RetryMax < c.RetryBase {
		errs = append(errs, fmt.Errorf("SENDQ_RETRY_MAX_DELAY (%s) is below SENDQ_RETRY_BASE_DELAY (%s)", c.RetryMax, c.RetryBase))
	}
	if c.SMTPTimeout >= c.ShutdownTimeout {
		errs = append(errs, fmt.Errorf("SENDQ_SMTP_TIMEOUT (%s) must be shorter than SENDQ_SHUTDOWN_TIMEOUT (%s)", c.SMTPTimeout, c.ShutdownTimeout))
	}
	return c, errors.Join(errs...)
}
