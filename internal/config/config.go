// Package config reads sendq's settings from the environment and flags.
// Every setting is an environment variable with a flag twin; Settings is
// the table README.md shows.
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/go-redis/redis_rate/v10"

	"github.com/sendq/sendq/events"
	"github.com/sendq/sendq/queue"
)

// Config is everything sendq reads from its environment and flags.
type Config struct {
	RedisURL        string
	SMTPURL         string
	SMTPRoutes      string
	CircuitFailures int
	CircuitCooldown time.Duration
	HTTPAddr        string
	APIKeys         string
	AdminKeys       string
	UIAllowWrites   bool
	AutoPipeline    bool
	AllowedFrom     string
	DefaultFrom     string
	MaxMessageBytes int64
	MaxBatch        int
	MaxBatchBytes   int64
	MaxRecipients   int
	MaxAttachments  int
	PoolSize        int
	IdleTimeout     time.Duration
	MaxConnAge      time.Duration
	SMTPTimeout     time.Duration
	Concurrency     int
	Fetchers        int
	HighConcurrency int
	ReservedConns   int
	QueueShards     int
	RetryBase       time.Duration
	RetryMax        time.Duration
	MaxAttempts     int
	MaxAge          time.Duration
	MaxSchedule     time.Duration
	ShutdownTimeout time.Duration
	Retention       time.Duration
	RatePerKey      redis_rate.Limit
	SMTPRate        redis_rate.Limit
	OutboxDir       string
	DKIM            string
	TextPart        bool
	LogFormat       string
	LogLevel        string

	WebhookEndpoints   []events.Endpoint
	WebhookSecrets     events.Secrets
	WebhookRetryBase   time.Duration
	WebhookConcurrency int

	Suppression     bool
	BounceDomain    string
	SigningKey      string
	InboundAddr     string
	InboundMaxBytes int64
	PublicURL       string
}

// Setting is one configuration item: an environment variable and its flag
// twin. The flag wins over the variable, the variable over the default.
type Setting struct {
	Env, Flag, Def, Help string
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

func boolean(name string, dst func(*Config) *bool) func(*Config, string) error {
	return func(c *Config, v string) error {
		b, err := strconv.ParseBool(strings.TrimSpace(v))
		if err != nil {
			return fmt.Errorf("%s=%q must be true or false", name, v)
		}
		*dst(c) = b
		return nil
	}
}

func rate(name string, dst func(*Config) *redis_rate.Limit) func(*Config, string) error {
	return func(c *Config, v string) error {
		l, err := queue.ParseRate(v)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		*dst(c) = l
		return nil
	}
}

// settings is the configuration table; README.md shows the same table.
var settings = []Setting{
	{Env: "REDIS_URL", Flag: "redis-url", Help: "redis://[user:pass@]host:port/db, rediss://, redis-sentinel://h1,h2/db?master=NAME or redis-cluster://h1,h2; unset: an embedded in-memory Redis (nothing survives a restart)",
		set: str(func(c *Config) *string { return &c.RedisURL }), secret: true},
	{Env: "SENDQ_SMTP_URL", Flag: "smtp-url", Help: "smtp://user:pass@host:587?tls=starttls, smtps://host:465 or smtp://host:25?tls=none; several relays, comma-separated, in failover order, each with name=, pool_size=, rate=; unset: an embedded SMTP server that writes .eml files to the outbox dir",
		set: str(func(c *Config) *string { return &c.SMTPURL }), secret: true},
	{Env: "SENDQ_SMTP_ROUTES", Flag: "smtp-routes", Help: "send some From domains or addresses only to their relays, by name: @a.com=primary,@b.com=eu|us; unset: every email goes through the relays in order",
		set: str(func(c *Config) *string { return &c.SMTPRoutes })},
	{Env: "SENDQ_SMTP_CIRCUIT_FAILURES", Flag: "smtp-circuit-failures", Def: "3", Help: "with several relays: session failures in a row (connect, greeting, STARTTLS, AUTH, connection lost) that take a relay out; a 421 takes it out at once",
		set: integer("SENDQ_SMTP_CIRCUIT_FAILURES", func(c *Config) *int { return &c.CircuitFailures }, 1)},
	{Env: "SENDQ_SMTP_CIRCUIT_COOLDOWN", Flag: "smtp-circuit-cooldown", Def: "30s", Help: "with several relays: how long a relay taken out is skipped before one send probes it",
		set: duration("SENDQ_SMTP_CIRCUIT_COOLDOWN", func(c *Config) *time.Duration { return &c.CircuitCooldown })},
	{Env: "SENDQ_HTTP_ADDR", Flag: "http-addr", Def: ":8080", Help: "HTTP listen address (API, /healthz, /readyz, /metrics)",
		set: str(func(c *Config) *string { return &c.HTTPAddr })},
	{Env: "SENDQ_API_KEYS", Flag: "api-keys", Help: "comma-separated API keys for Authorization: Bearer KEY, each optionally KEY:@a.com|ops@b.com to limit its From; unset: no auth",
		set: str(func(c *Config) *string { return &c.APIKeys }), secret: true},
	{Env: "SENDQ_ADMIN_KEYS", Flag: "admin-keys", Help: "comma-separated keys for the web view at /ui/; unset: the API keys",
		set: str(func(c *Config) *string { return &c.AdminKeys }), secret: true},
	{Env: "SENDQ_UI_ALLOW_WRITES", Flag: "ui-allow-writes", Def: "false", Help: "let the web view at /ui/ change tasks (retry, delete, pause); default read-only",
		set: boolean("SENDQ_UI_ALLOW_WRITES", func(c *Config) *bool { return &c.UIAllowWrites })},
	{Env: "SENDQ_REDIS_AUTOPIPELINE", Flag: "redis-autopipeline", Def: "true", Help: "let the enqueues of concurrent requests and the delivery records of concurrent sends share Redis pipelines (go-redis AutoPipeliner); false: one round trip each",
		set: boolean("SENDQ_REDIS_AUTOPIPELINE", func(c *Config) *bool { return &c.AutoPipeline })},
	{Env: "SENDQ_ALLOWED_FROM", Flag: "allowed-from", Help: "comma-separated addresses (a@x.com) or domains (@x.com) allowed as From; unset: any",
		set: str(func(c *Config) *string { return &c.AllowedFrom })},
	{Env: "SENDQ_DEFAULT_FROM", Flag: "default-from", Help: "From used when a request has none",
		set: str(func(c *Config) *string { return &c.DefaultFrom })},
	{Env: "SENDQ_MAX_MESSAGE_BYTES", Flag: "max-message-bytes", Def: "26214400", Help: "largest request body accepted",
		set: func(c *Config, v string) error {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil || n < 1024 {
				return fmt.Errorf("SENDQ_MAX_MESSAGE_BYTES=%q must be a whole number of at least 1024", v)
			}
			c.MaxMessageBytes = n
			return nil
		}},
	{Env: "SENDQ_MAX_BATCH", Flag: "max-batch", Def: "1000", Help: "most messages in one POST /v1/emails/batch",
		set: integer("SENDQ_MAX_BATCH", func(c *Config) *int { return &c.MaxBatch }, 1)},
	{Env: "SENDQ_MAX_BATCH_BYTES", Flag: "max-batch-bytes", Def: "52428800", Help: "largest POST /v1/emails/batch body; each message is also held to SENDQ_MAX_MESSAGE_BYTES",
		set: func(c *Config, v string) error {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil || n < 1024 {
				return fmt.Errorf("SENDQ_MAX_BATCH_BYTES=%q must be a whole number of at least 1024", v)
			}
			c.MaxBatchBytes = n
			return nil
		}},
	{Env: "SENDQ_MAX_RECIPIENTS", Flag: "max-recipients", Def: "100", Help: "most recipients across To, CC and Bcc",
		set: integer("SENDQ_MAX_RECIPIENTS", func(c *Config) *int { return &c.MaxRecipients }, 1)},
	{Env: "SENDQ_MAX_ATTACHMENTS", Flag: "max-attachments", Def: "100", Help: "most attachments (inline parts included) in one email",
		set: integer("SENDQ_MAX_ATTACHMENTS", func(c *Config) *int { return &c.MaxAttachments }, 1)},
	{Env: "SENDQ_SMTP_POOL_SIZE", Flag: "smtp-pool-size", Def: "10", Help: "most SMTP connections one worker process keeps open to each relay (a relay's pool_size= overrides it)",
		set: integer("SENDQ_SMTP_POOL_SIZE", func(c *Config) *int { return &c.PoolSize }, 1)},
	{Env: "SENDQ_SMTP_IDLE_TIMEOUT", Flag: "smtp-idle-timeout", Def: "30s", Help: "an SMTP connection idle longer is closed, not reused",
		set: duration("SENDQ_SMTP_IDLE_TIMEOUT", func(c *Config) *time.Duration { return &c.IdleTimeout })},
	{Env: "SENDQ_SMTP_MAX_CONN_AGE", Flag: "smtp-max-conn-age", Def: "5m", Help: "an SMTP connection older than this is retired",
		set: duration("SENDQ_SMTP_MAX_CONN_AGE", func(c *Config) *time.Duration { return &c.MaxConnAge })},
	{Env: "SENDQ_SMTP_TIMEOUT", Flag: "smtp-timeout", Def: "20s", Help: "bound on one SMTP dial or transaction; must be below the shutdown timeout",
		set: duration("SENDQ_SMTP_TIMEOUT", func(c *Config) *time.Duration { return &c.SMTPTimeout })},
	{Env: "SENDQ_WORKER_CONCURRENCY", Flag: "worker-concurrency", Def: "", Help: "emails one worker process handles at once; default 4 x pool size",
		set: integer("SENDQ_WORKER_CONCURRENCY", func(c *Config) *int { return &c.Concurrency }, 1)},
	{Env: "SENDQ_WORKER_FETCHERS", Flag: "worker-fetchers", Def: "4", Help: "asynq servers one worker process runs over its pool, splitting the concurrency: each takes tasks from Redis one round trip at a time",
		set: integer("SENDQ_WORKER_FETCHERS", func(c *Config) *int { return &c.Fetchers }, 1)},
	{Env: "SENDQ_HIGH_CONCURRENCY", Flag: "high-concurrency", Def: "", Help: "share of the worker concurrency reserved for high-priority email, on the last fetcher, which serves only the high queues; default the last fetcher's even share (concurrency / fetchers)",
		set: integer("SENDQ_HIGH_CONCURRENCY", func(c *Config) *int { return &c.HighConcurrency }, 1)},
	{Env: "SENDQ_SMTP_RESERVED", Flag: "smtp-reserved", Def: "", Help: "SMTP connections of the pool that normal and bulk email may not take (kept for high); default pool size / 5, at least 1; 0: none",
		set: func(c *Config, v string) error {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil || n < 0 {
				return fmt.Errorf("SENDQ_SMTP_RESERVED=%q must be a whole number of at least 0", v)
			}
			c.ReservedConns = n
			if n == 0 {
				c.ReservedConns = -1 // none, as asked
			}
			return nil
		}},
	{Env: "SENDQ_QUEUE_SHARDS", Flag: "queue-shards", Def: "1", Help: "asynq queues per priority, named so that their Redis Cluster hash slots spread over the keyspace (2 per cluster master is a good start); every API, worker and CLI process must use the same number",
		set: func(c *Config, v string) error {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil || n < 1 || n > queue.MaxShards {
				return fmt.Errorf("SENDQ_QUEUE_SHARDS=%q must be a whole number from 1 to %d", v, queue.MaxShards)
			}
			c.QueueShards = n
			return nil
		}},
	{Env: "SENDQ_RETRY_BASE_DELAY", Flag: "retry-base-delay", Def: "30s", Help: "first retry delay, doubled each retry with jitter",
		set: duration("SENDQ_RETRY_BASE_DELAY", func(c *Config) *time.Duration { return &c.RetryBase })},
	{Env: "SENDQ_RETRY_MAX_DELAY", Flag: "retry-max-delay", Def: "1h", Help: "cap on the retry delay",
		set: duration("SENDQ_RETRY_MAX_DELAY", func(c *Config) *time.Duration { return &c.RetryMax })},
	{Env: "SENDQ_MAX_ATTEMPTS", Flag: "max-attempts", Def: "20", Help: "delivery attempts before an email is failed",
		set: integer("SENDQ_MAX_ATTEMPTS", func(c *Config) *int { return &c.MaxAttempts }, 1)},
	{Env: "SENDQ_MAX_AGE", Flag: "max-age", Def: "72h", Help: "an email not delivered within this of its SendAt (else of its acceptance) is failed (reason expired); a SendAt further back is refused",
		set: duration("SENDQ_MAX_AGE", func(c *Config) *time.Duration { return &c.MaxAge })},
	{Env: "SENDQ_MAX_SCHEDULE", Flag: "max-schedule", Def: "720h", Help: "how far ahead SendAt may be (720h: 30 days)",
		set: duration("SENDQ_MAX_SCHEDULE", func(c *Config) *time.Duration { return &c.MaxSchedule })},
	{Env: "SENDQ_SHUTDOWN_TIMEOUT", Flag: "shutdown-timeout", Def: "25s", Help: "how long a stopping worker lets in-flight sends finish",
		set: duration("SENDQ_SHUTDOWN_TIMEOUT", func(c *Config) *time.Duration { return &c.ShutdownTimeout })},
	{Env: "SENDQ_RETENTION", Flag: "retention", Def: "24h", Help: "how long a sent email stays visible in the status API",
		set: duration("SENDQ_RETENTION", func(c *Config) *time.Duration { return &c.Retention })},
	{Env: "SENDQ_RATE_PER_KEY", Flag: "rate-per-key", Help: "intake limit per API key across all API processes, e.g. 100/s or 6000/m; over it: 429 with Retry-After; unset: none",
		set: rate("SENDQ_RATE_PER_KEY", func(c *Config) *redis_rate.Limit { return &c.RatePerKey })},
	{Env: "SENDQ_SMTP_RATE", Flag: "smtp-rate", Help: "SMTP transactions per period to each relay across all worker processes, e.g. 14/s (a relay's rate= overrides it); unset: none",
		set: rate("SENDQ_SMTP_RATE", func(c *Config) *redis_rate.Limit { return &c.SMTPRate })},
	{Env: "SENDQ_DKIM", Flag: "dkim", Help: "DKIM signing keys: comma-separated domain:selector:/path/key.pem (RSA of at least 2048 bits, or Ed25519); a message whose From domain, or its closest parent, has keys is signed with each; unset: nothing is signed",
		set: str(func(c *Config) *string { return &c.DKIM })},
	{Env: "SENDQ_TEXT_PART", Flag: "text-part", Def: "true", Help: "give an HTML-only body a text/plain alternative derived from it (multipart/alternative); false: send the HTML alone",
		set: boolean("SENDQ_TEXT_PART", func(c *Config) *bool { return &c.TextPart })},
	{Env: "SENDQ_WEBHOOK_URLS", Flag: "webhook-urls", Help: "comma-separated http(s) URLs that receive every event, signed as Standard Webhooks; unset: events are kept for the API only",
		set: func(c *Config, v string) error {
			eps, err := events.ParseEndpoints(v)
			if err != nil {
				return fmt.Errorf("SENDQ_WEBHOOK_URLS: %w", err)
			}
			c.WebhookEndpoints = eps
			return nil
		}, secret: true},
	{Env: "SENDQ_WEBHOOK_SECRET", Flag: "webhook-secret", Help: "whsec_ and the base64 of at least 24 random bytes; several separated by spaces while rotating (each signs every delivery); required with SENDQ_WEBHOOK_URLS",
		set: func(c *Config, v string) error {
			s, err := events.ParseSecrets(v)
			if err != nil {
				return fmt.Errorf("SENDQ_WEBHOOK_SECRET: %w", err)
			}
			c.WebhookSecrets = s
			return nil
		}, secret: true},
	{Env: "SENDQ_WEBHOOK_RETRY_BASE", Flag: "webhook-retry-base", Def: "5s", Help: "first webhook retry delay; the rest of the Standard Webhooks schedule (5m, 30m, 2h, 5h, 10h, 14h, 20h, 24h) keeps its proportion to it",
		set: duration("SENDQ_WEBHOOK_RETRY_BASE", func(c *Config) *time.Duration { return &c.WebhookRetryBase })},
	{Env: "SENDQ_WEBHOOK_CONCURRENCY", Flag: "webhook-concurrency", Def: "10", Help: "webhook deliveries one worker process makes at once (its own asynq server, apart from email)",
		set: integer("SENDQ_WEBHOOK_CONCURRENCY", func(c *Config) *int { return &c.WebhookConcurrency }, 1)},
	{Env: "SENDQ_OUTBOX_DIR", Flag: "outbox-dir", Def: "./sendq-outbox", Help: "where the embedded SMTP server writes .eml files",
		set: str(func(c *Config) *string { return &c.OutboxDir })},
	{Env: "SENDQ_SUPPRESSION", Flag: "suppression", Def: "true", Help: "keep a suppression list (hard bounces, complaints, unsubscribes, manual entries) and never send to an address on it; false: none",
		set: boolean("SENDQ_SUPPRESSION", func(c *Config) *bool { return &c.Suppression })},
	{Env: "SENDQ_BOUNCE_DOMAIN", Flag: "bounce-domain", Help: "domain whose mail reaches sendq's inbound listener (its MX): the envelope sender becomes b+TOKEN@DOMAIN and asynchronous bounces and complaints come back to sendq; unset: envelope sender is From",
		set: func(c *Config, v string) error {
			v = strings.ToLower(strings.TrimSpace(v))
			if strings.ContainsAny(v, "@ /\\") || !strings.Contains(v, ".") {
				return fmt.Errorf("SENDQ_BOUNCE_DOMAIN=%q must be a domain such as bounces.example.com", v)
			}
			c.BounceDomain = v
			return nil
		}},
	{Env: "SENDQ_SIGNING_KEY", Flag: "signing-key", Help: "secret of at least 32 bytes that signs bounce references and unsubscribe links (HMAC-SHA256); needed with SENDQ_BOUNCE_DOMAIN or SENDQ_PUBLIC_URL",
		set: str(func(c *Config) *string { return &c.SigningKey }), secret: true},
	{Env: "SENDQ_INBOUND_ADDR", Flag: "inbound-addr", Def: ":2525", Help: "SMTP listen address of the inbound bounce listener (sendq inbound, and sendq serve when SENDQ_BOUNCE_DOMAIN is set)",
		set: str(func(c *Config) *string { return &c.InboundAddr })},
	{Env: "SENDQ_INBOUND_MAX_BYTES", Flag: "inbound-max-bytes", Def: "10485760", Help: "largest message the inbound listener takes (552 beyond)",
		set: func(c *Config, v string) error {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil || n < 4096 {
				return fmt.Errorf("SENDQ_INBOUND_MAX_BYTES=%q must be a whole number of at least 4096", v)
			}
			c.InboundMaxBytes = n
			return nil
		}},
	{Env: "SENDQ_PUBLIC_URL", Flag: "public-url", Help: "where the API is reached from outside (https://mail.example.com): the base of one-click unsubscribe links; unset: ListUnsubscribe is refused",
		set: func(c *Config, v string) error {
			u, err := url.Parse(strings.TrimSpace(v))
			if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
				return fmt.Errorf("SENDQ_PUBLIC_URL=%q must be an http(s) URL such as https://mail.example.com", v)
			}
			c.PublicURL = strings.TrimRight(u.String(), "/")
			return nil
		}},
	{Env: "SENDQ_LOG_FORMAT", Flag: "log-format", Def: "text", Help: "text or json",
		set: func(c *Config, v string) error {
			if v != "text" && v != "json" {
				return fmt.Errorf("SENDQ_LOG_FORMAT=%q must be text or json", v)
			}
			c.LogFormat = v
			return nil
		}},
	{Env: "SENDQ_LOG_LEVEL", Flag: "log-level", Def: "info", Help: "debug, info, warn or error",
		set: func(c *Config, v string) error {
			switch v {
			case "debug", "info", "warn", "error":
				c.LogLevel = v
				return nil
			}
			return fmt.Errorf("SENDQ_LOG_LEVEL=%q must be debug, info, warn or error", v)
		}},
}

// Settings returns the configuration table: every variable sendq reads.
func Settings() []Setting { return append([]Setting(nil), settings...) }

// Load reads the configuration from flags (args) and the environment
// (getenv). It is a pure function: no I/O but writing usage to out.
func Load(name string, args []string, getenv func(string) string, out io.Writer) (*Config, error) {
	c := &Config{}
	fs := flag.NewFlagSet("sendq "+name, flag.ContinueOnError)
	fs.SetOutput(out)
	vals := make([]*string, len(settings))
	for i, s := range settings {
		def := s.Def
		if v := getenv(s.Env); v != "" {
			def = v
		}
		shown := def
		if s.secret {
			shown = "" // never print a secret in usage
		}
		vals[i] = new(string)
		fs.StringVar(vals[i], s.Flag, def, s.Help+" (env "+s.Env+")")
		if f := fs.Lookup(s.Flag); f != nil {
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
		c.Concurrency = 4 * c.PoolSize
	}
	if c.RetryMax < c.RetryBase {
		errs = append(errs, fmt.Errorf("SENDQ_RETRY_MAX_DELAY (%s) is below SENDQ_RETRY_BASE_DELAY (%s)", c.RetryMax, c.RetryBase))
	}
	if len(c.WebhookEndpoints) > 0 && c.WebhookSecrets.Len() == 0 {
		errs = append(errs, errors.New("SENDQ_WEBHOOK_SECRET is required when SENDQ_WEBHOOK_URLS is set (whsec_ and the base64 of at least 24 random bytes)"))
	}
	if (c.BounceDomain != "" || c.PublicURL != "") && len(c.SigningKey) < 32 {
		errs = append(errs, errors.New("SENDQ_BOUNCE_DOMAIN and SENDQ_PUBLIC_URL need SENDQ_SIGNING_KEY of at least 32 bytes"))
	} else if c.SigningKey != "" && len(c.SigningKey) < 32 {
		errs = append(errs, errors.New("SENDQ_SIGNING_KEY must be at least 32 bytes"))
	}
	if c.SMTPTimeout >= c.ShutdownTimeout {
		errs = append(errs, fmt.Errorf("SENDQ_SMTP_TIMEOUT (%s) must be shorter than SENDQ_SHUTDOWN_TIMEOUT (%s)", c.SMTPTimeout, c.ShutdownTimeout))
	}
	return c, errors.Join(errs...)
}

// Topology is the queue naming of QueueShards.
func (c *Config) Topology() *queue.Topology { return queue.NewTopology(c.QueueShards) }

// RecordTTL is how long a delivery record outlives its last write: longer
// than an email may be retried (MaxAge) plus how long a finished one stays
// visible (Retention), with a day to spare.
func (c *Config) RecordTTL() time.Duration { return c.MaxAge + c.Retention + 24*time.Hour }
