// Package client is the Go client of sendq's HTTP API.
//
// Send queues an email (the Logic Apps SMTP connector's Send Email fields,
// as typed structs) and returns its id once sendq stored it; Status and
// Wait follow its delivery, Cancel stops it. Every send carries an
// Idempotency-Key, generated unless given, so the client can retry a send
// whose answer it did not get, or that sendq asked to repeat (429, 503),
// without queueing the email twice. Retries are bounded, back off with
// jitter, honour Retry-After and stop with the context.
//
// The package imports nothing of the server: it speaks HTTP and JSON only.
package client

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Client calls one sendq server. It is safe for concurrent use.
type Client struct {
	base       string // scheme://host[/prefix], no trailing slash
	auth       string // "Bearer KEY", or empty
	hc         *http.Client
	maxRetries int
	minBackoff time.Duration
	maxBackoff time.Duration
	minPoll    time.Duration
	maxPoll    time.Duration
}

// Option configures a Client.
type Option func(*Client)

// WithHTTPClient makes the client send its requests through hc. Without
// it the client has its own http.Client, with a 30 s timeout per request.
func WithHTTPClient(hc *http.Client) Option { return func(c *Client) { c.hc = hc } }

// WithRetries sets how many times a request is tried again after a
// connection error, a 429, 502, 503 or 504. If unset, 4; 0 tries once.
func WithRetries(n int) Option { return func(c *Client) { c.maxRetries = max(n, 0) } }

// WithBackoff sets the wait before the first retry (doubled for each
// next one, with jitter) and its cap. A Retry-After from sendq is
// honoured instead. If unset, 250ms and 10s.
func WithBackoff(first, limit time.Duration) Option {
	return func(c *Client) { c.minBackoff, c.maxBackoff = first, limit }
}

// WithPollInterval sets Wait's first interval between status requests
// (doubled for each next one) and its cap. If unset, 200ms and 5s.
func WithPollInterval(first, limit time.Duration) Option {
	return func(c *Client) { c.minPoll, c.maxPoll = first, limit }
}

// New returns a client of the sendq at baseURL ("https://sendq.example.com",
// or with a path prefix) that authenticates with apiKey (empty for a server
// without API keys).
func New(baseURL, apiKey string, opts ...Option) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil {
		return nil, fmt.Errorf("sendq client: base URL: %w", err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("sendq client: base URL %q: want http(s)://host[/path]", baseURL)
	}
	if strings.ContainsAny(apiKey, "\r\n") {
		return nil, errors.New("sendq client: the API key has a line break")
	}
	c := &Client{
		base:       strings.TrimSuffix(u.String(), "/"),
		maxRetries: 4,
		minBackoff: 250 * time.Millisecond, maxBackoff: 10 * time.Second,
		minPoll: 200 * time.Millisecond, maxPoll: 5 * time.Second,
	}
	if apiKey != "" {
		c.auth = "Bearer " + apiKey
	}
	for _, o := range opts {
		o(c)
	}
	if c.hc == nil {
		c.hc = &http.Client{Timeout: 30 * time.Second, Transport: http.DefaultTransport.(*http.Transport).Clone()}
	}
	if c.minBackoff <= 0 || c.maxBackoff < c.minBackoff {
		return nil, fmt.Errorf("sendq client: backoff %s to %s: want 0 < first <= limit", c.minBackoff, c.maxBackoff)
	}
	if c.minPoll <= 0 || c.maxPoll < c.minPoll {
		return nil, fmt.Errorf("sendq client: poll interval %s to %s: want 0 < first <= limit", c.minPoll, c.maxPoll)
	}
	return c, nil
}

// Close closes the idle connections of the client's HTTP client. The
// client must not be used after.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// SendOption configures one Send.
type SendOption func(*sendOptions)

type sendOptions struct{ idemKey string }

// IdempotencyKey sends key (at most 255 printable characters) as the
// email's Idempotency-Key instead of a generated one: another Send with
// the same key and the same Email, even from another process, returns
// the first one's id and queues nothing, for as long as sendq keeps that
// email (24 hours after it was sent, by default).
func IdempotencyKey(key string) SendOption { return func(o *sendOptions) { o.idemKey = key } }

// Send queues e and returns sendq's answer once the email is stored. A
// connection error, 429, 502, 503 or 504 is retried with the same
// Idempotency-Key, so the email is queued once however many tries it
// takes. Any other refusal is an *APIError, returned without a retry.
func (c *Client) Send(ctx context.Context, e Email, opts ...SendOption) (*Accepted, error) {
	var o sendOptions
	for _, opt := range opts {
		opt(&o)
	}
	if o.idemKey == "" {
		o.idemKey = crand.Text() // 128 bits from crypto/rand
	}
	body, err := json.Marshal(e)
	if err != nil {
		return nil, fmt.Errorf("sendq client: encode the email: %w", err)
	}
	var acc Accepted
	if _, err := c.do(ctx, http.MethodPost, "/v1/emails", body, o.idemKey, &acc); err != nil {
		return nil, err
	}
	return &acc, nil
}

// Status returns the delivery status of email id. An unknown id is an
// *APIError with Status 404.
func (c *Client) Status(ctx context.Context, id string) (*EmailStatus, error) {
	if id == "" {
		return nil, errors.New("sendq client: no email id")
	}
	var st EmailStatus
	if _, err := c.do(ctx, http.MethodGet, "/v1/emails/"+url.PathEscape(id), nil, "", &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// Wait polls the status of email id until it is final (sent, failed or
// canceled) and returns it, waiting longer between polls each time (see
// WithPollInterval). When ctx ends first, or a status request fails
// (after its retries), it returns the last status it got (nil if none)
// with the error, which wraps ctx's when ctx ended.
func (c *Client) Wait(ctx context.Context, id string) (*EmailStatus, error) {
	delay := c.minPoll
	var last *EmailStatus
	for {
		st, err := c.Status(ctx, id)
		if err != nil {
			return last, err
		}
		if st.Status.Final() {
			return st, nil
		}
		last = st
		if err := sleep(ctx, delay); err != nil {
			return last, err
		}
		delay = min(2*delay, c.maxPoll)
	}
}

// Cancel cancels a queued, scheduled or retrying email and returns its
// status (canceled). An email being sent or finished is an *APIError with
// Status 409. A cancel retried after a lost answer, which then finds the
// email canceled already, succeeds.
func (c *Client) Cancel(ctx context.Context, id string) (*EmailStatus, error) {
	if id == "" {
		return nil, errors.New("sendq client: no email id")
	}
	var st EmailStatus
	retried, err := c.do(ctx, http.MethodDelete, "/v1/emails/"+url.PathEscape(id), nil, "", &st)
	var ae *APIError
	if retried && errors.As(err, &ae) && ae.Status == http.StatusConflict {
		// The first try may have canceled it and lost the answer.
		if now, serr := c.Status(ctx, id); serr == nil && now.Status == StateCanceled {
			return now, nil
		}
	}
	if err != nil {
		return nil, err
	}
	return &st, nil
}

// do sends one request, retrying what may succeed later, and decodes a
// 2xx answer into out. retried reports whether more than one try was made.
func (c *Client) do(ctx context.Context, method, path string, body []byte, idemKey string, out any) (retried bool, err error) {
	for attempt := 0; ; attempt++ {
		wait, err := c.try(ctx, method, path, body, idemKey, out)
		if err == nil {
			return attempt > 0, nil
		}
		if wait < 0 || attempt >= c.maxRetries {
			return attempt > 0, err
		}
		if wait == 0 {
			wait = c.backoff(attempt)
		}
		if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) < wait {
			// The retry could not start in time: say why it was not made.
			return attempt > 0, fmt.Errorf("%w (not retried: %w)", err, context.DeadlineExceeded)
		}
		if serr := sleep(ctx, wait); serr != nil {
			return attempt > 0, fmt.Errorf("%w (not retried: %w)", err, serr)
		}
	}
}

// try makes one request. wait is negative when the outcome is final, 0
// when a retry should back off, or the Retry-After the server asked for.
func (c *Client) try(ctx context.Context, method, path string, body []byte, idemKey string, out any) (wait time.Duration, err error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return -1, fmt.Errorf("sendq client: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "sendq-go-client")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.auth != "" {
		req.Header.Set("Authorization", c.auth)
	}
	if idemKey != "" {
		req.Header.Set("Idempotency-Key", idemKey)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return -1, fmt.Errorf("sendq client: %s %s: %w", method, path, ctx.Err())
		}
		// No answer: the request may or may not have been served. A
		// send's retry carries the same Idempotency-Key.
		return 0, fmt.Errorf("sendq client: %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		if ctx.Err() != nil {
			return -1, fmt.Errorf("sendq client: %s %s: %w", method, path, ctx.Err())
		}
		return 0, fmt.Errorf("sendq client: %s %s: read the answer: %w", method, path, err)
	}
	if resp.StatusCode/100 == 2 {
		if out == nil {
			return -1, nil // the caller wants only the outcome
		}
		if err := json.Unmarshal(raw, out); err != nil {
			return -1, fmt.Errorf("sendq client: %s %s: decode the %d answer: %w", method, path, resp.StatusCode, err)
		}
		return -1, nil
	}
	ae := &APIError{Status: resp.StatusCode, raw: raw}
	var eb struct {
		Error struct{ Code, Message, Field string } `json:"error"`
	}
	if json.Unmarshal(raw, &eb) == nil && eb.Error.Code != "" {
		ae.Code, ae.Message, ae.Field = eb.Error.Code, eb.Error.Message, eb.Error.Field
	} else {
		ae.Message = http.StatusText(resp.StatusCode)
	}
	if !retryableStatus(resp.StatusCode) {
		return -1, ae
	}
	return retryAfter(resp.Header.Get("Retry-After")), ae
}

func retryableStatus(code int) bool {
	switch code {
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
}

// retryAfter reads a Retry-After of seconds or an HTTP date; 0 if none.
func retryAfter(h string) time.Duration {
	if h == "" {
		return 0
	}
	if s, err := strconv.Atoi(strings.TrimSpace(h)); err == nil && s >= 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(h); err == nil {
		return max(time.Until(t), 0)
	}
	return 0
}

// backoff is the wait before retry attempt+1: minBackoff doubled for each
// earlier retry, capped, with its upper half drawn at random so that
// clients that failed together do not retry together.
func (c *Client) backoff(attempt int) time.Duration {
	d := c.minBackoff
	for range attempt {
		if d >= c.maxBackoff/2 {
			d = c.maxBackoff
			break
		}
		d *= 2
	}
	d = min(d, c.maxBackoff)
	return d/2 + rand.N(d/2+1)
}

// sleep waits d or until ctx ends, and then returns ctx's error.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
