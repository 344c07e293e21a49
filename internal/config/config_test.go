package config

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestDefaults(t *testing.T) {
	c, err := Load("serve", nil, env(nil), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.HTTPAddr != ":8080" || c.PoolSize != 10 || c.Concurrency != 40 || c.Fetchers != 4 || !c.AutoPipeline || c.MaxAttempts != 20 ||
		c.RetryBase != 30*time.Second || c.RetryMax != time.Hour || c.MaxAge != 72*time.Hour ||
		c.ShutdownTimeout != 25*time.Second || c.MaxMessageBytes != 26214400 || c.MaxRecipients != 100 ||
		c.IdleTimeout != 30*time.Second || c.MaxConnAge != 5*time.Minute || c.Retention != 24*time.Hour {
		t.Errorf("defaults = %+v", c)
	}
	if c.CircuitFailures != 3 || c.CircuitCooldown != 30*time.Second || c.SMTPRoutes != "" {
		t.Errorf("circuit defaults = %d failures, %s cool-down, routes %q; want 3, 30s, none", c.CircuitFailures, c.CircuitCooldown, c.SMTPRoutes)
	}
	if c.MaxBatch != 1000 || c.MaxBatchBytes != 50<<20 {
		t.Errorf("batch limits = %d messages, %d bytes; want 1000, 50 MiB", c.MaxBatch, c.MaxBatchBytes)
	}
	if c.RedisURL != "" || c.SMTPURL != "" || !c.RatePerKey.IsZero() {
		t.Errorf("REDIS_URL, SENDQ_SMTP_URL and rates must default to unset: %+v", c)
	}
}

func TestEnvAndFlags(t *testing.T) {
	e := env(map[string]string{"SENDQ_SMTP_POOL_SIZE": "4", "SENDQ_HTTP_ADDR": ":9000", "SENDQ_RATE_PER_KEY": "100/s"})
	c, err := Load("serve", []string{"-http-addr", "127.0.0.1:9999"}, e, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.PoolSize != 4 || c.Concurrency != 16 {
		t.Errorf("pool %d concurrency %d; want 4 and 4x4 from the env", c.PoolSize, c.Concurrency)
	}
	if c.HTTPAddr != "127.0.0.1:9999" {
		t.Errorf("HTTPAddr = %q; the flag must win over the env", c.HTTPAddr)
	}
	if c.RatePerKey.Rate != 100 || c.RatePerKey.Period != time.Second {
		t.Errorf("RatePerKey = %v", c.RatePerKey)
	}
}

func TestInvalidValuesNameTheVariable(t *testing.T) {
	tests := []struct{ env, value string }{
		{"SENDQ_SMTP_POOL_SIZE", "0"},
		{"SENDQ_MAX_ATTEMPTS", "many"},
		{"SENDQ_RETRY_BASE_DELAY", "soon"},
		{"SENDQ_LOG_FORMAT", "xml"},
		{"SENDQ_RATE_PER_KEY", "fast"},
		{"SENDQ_SMTP_TIMEOUT", "30s"}, // not below the 25s shutdown timeout
		{"SENDQ_RETRY_MAX_DELAY", "1s"},
		{"SENDQ_SMTP_CIRCUIT_FAILURES", "0"},
		{"SENDQ_SMTP_CIRCUIT_COOLDOWN", "soon"},
	}
	for _, tt := range tests {
		_, err := Load("serve", nil, env(map[string]string{tt.env: tt.value}), &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), tt.env) {
			t.Errorf("Load(%s=%q) = %v; want an error naming %s", tt.env, tt.value, err, tt.env)
		}
	}
}

func TestUsageHidesSecrets(t *testing.T) {
	var out bytes.Buffer
	_, err := Load("serve", []string{"-h"}, env(map[string]string{
		"REDIS_URL": "redis://:hunter2@r:6379", "SENDQ_SMTP_URL": "smtp://u:hunter3@h", "SENDQ_API_KEYS": "hunter4-key",
	}), &out)
	if err == nil {
		t.Fatal("-h returned no error")
	}
	for _, s := range []string{"hunter2", "hunter3", "hunter4"} {
		if strings.Contains(out.String(), s) {
			t.Errorf("usage shows the secret %q", s)
		}
	}
	for _, s := range Settings() {
		if !strings.Contains(out.String(), s.Env) {
			t.Errorf("usage does not name %s", s.Env)
		}
	}
}

func FuzzLoad(f *testing.F) {
	f.Add("SENDQ_SMTP_POOL_SIZE", "10")
	f.Add("SENDQ_RATE_PER_KEY", "100/s")
	f.Add("SENDQ_MAX_AGE", "-1h")
	f.Fuzz(func(t *testing.T, name, value string) {
		c, err := Load("serve", nil, env(map[string]string{name: value}), &bytes.Buffer{})
		if err == nil && (c.PoolSize < 1 || c.MaxAttempts < 1 || c.SMTPTimeout >= c.ShutdownTimeout) {
			t.Errorf("Load(%s=%q) accepted an invalid configuration: %+v", name, value, c)
		}
	})
}

func TestScheduleAndAttachmentLimits(t *testing.T) {
	c, err := Load("serve", nil, env(nil), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.MaxSchedule != 720*time.Hour || c.MaxAttachments != 100 {
		t.Errorf("defaults MaxSchedule %s MaxAttachments %d; want 720h and 100", c.MaxSchedule, c.MaxAttachments)
	}
	c, err = Load("serve", []string{"-max-attachments", "5"}, env(map[string]string{"SENDQ_MAX_SCHEDULE": "48h"}), &bytes.Buffer{})
	if err != nil || c.MaxSchedule != 48*time.Hour || c.MaxAttachments != 5 {
		t.Errorf("Load = %+v, %v; want MaxSchedule 48h and MaxAttachments 5", c, err)
	}
	for k, v := range map[string]string{"SENDQ_MAX_SCHEDULE": "-1h", "SENDQ_MAX_ATTACHMENTS": "0"} {
		if _, err := Load("serve", nil, env(map[string]string{k: v}), &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), k) {
			t.Errorf("%s=%s: error %v; want one naming %s", k, v, err, k)
		}
	}
}

func TestDKIMAndTextPart(t *testing.T) {
	c, err := Load("worker", nil, env(nil), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.DKIM != "" || !c.TextPart {
		t.Errorf("DKIM %q, TextPart %v; want unset and true by default", c.DKIM, c.TextPart)
	}
	c, err = Load("worker", []string{"-dkim", "contoso.example:s1:/etc/sendq/s1.pem"},
		env(map[string]string{"SENDQ_TEXT_PART": "false", "SENDQ_DKIM": "x.example:s:/k.pem"}), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.DKIM != "contoso.example:s1:/etc/sendq/s1.pem" || c.TextPart {
		t.Errorf("DKIM %q, TextPart %v; want the flag's keys and false from the env", c.DKIM, c.TextPart)
	}
	if _, err := Load("worker", nil, env(map[string]string{"SENDQ_TEXT_PART": "sometimes"}), &bytes.Buffer{}); err == nil ||
		!strings.Contains(err.Error(), "SENDQ_TEXT_PART") {
		t.Errorf("SENDQ_TEXT_PART=sometimes: %v; want an error naming it", err)
	}
}

func TestWebhookSettings(t *testing.T) {
	const secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" // 24 bytes
	c, err := Load("serve", nil, env(map[string]string{
		"SENDQ_WEBHOOK_URLS":   "https://a.example/hooks?token=abc, http://127.0.0.1:9000/",
		"SENDQ_WEBHOOK_SECRET": secret + " " + secret,
	}), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if len(c.WebhookEndpoints) != 2 || c.WebhookSecrets.Len() != 2 || c.WebhookRetryBase != 5*time.Second || c.WebhookConcurrency != 10 {
		t.Errorf("webhook settings = %+v", c)
	}
	for _, tc := range []struct {
		env  map[string]string
		name string
	}{
		{map[string]string{"SENDQ_WEBHOOK_URLS": "https://a.example/"}, "SENDQ_WEBHOOK_SECRET"},
		{map[string]string{"SENDQ_WEBHOOK_URLS": "https://a.example/", "SENDQ_WEBHOOK_SECRET": "whsec_c2hvcnQ="}, "SENDQ_WEBHOOK_SECRET"},
		{map[string]string{"SENDQ_WEBHOOK_URLS": "https://a.example/", "SENDQ_WEBHOOK_SECRET": "hunter2-not-a-secret"}, "SENDQ_WEBHOOK_SECRET"},
		{map[string]string{"SENDQ_WEBHOOK_URLS": "mailto:x@y.z", "SENDQ_WEBHOOK_SECRET": secret}, "SENDQ_WEBHOOK_URLS"},
		{map[string]string{"SENDQ_WEBHOOK_RETRY_BASE": "0s"}, "SENDQ_WEBHOOK_RETRY_BASE"},
	} {
		_, err := Load("serve", nil, env(tc.env), &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), tc.name) {
			t.Errorf("Load(%v) = %v; want an error naming %s", tc.env, err, tc.name)
		}
		if err != nil && (strings.Contains(err.Error(), "hunter2") || strings.Contains(err.Error(), "c2hvcnQ")) {
			t.Errorf("Load error %q shows the secret", err)
		}
	}
}
