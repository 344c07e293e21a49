package producer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/google/uuid"
	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/sendq/sendq/events"
	"github.com/sendq/sendq/metrics"
	"github.com/sendq/sendq/queue"
	"github.com/sendq/sendq/suppression"
	"github.com/sendq/sendq/templates"
	"github.com/sendq/sendq/token"
)

// Enqueuer stores a task in the queue. *asynq.Client implements it.
type Enqueuer interface {
	EnqueueContext(ctx context.Context, task *asynq.Task, opts ...asynq.Option) (*asynq.TaskInfo, error)
}

// Config configures the intake. Zero values take the documented defaults.
type Config struct {
	// Keys are the accepted API keys. If empty, requests need no key and
	// every caller sees every email. Each key sees and changes only the
	// emails it sent, or its tenant's (APIKey.Tenant); another's is 404.
	Keys []APIKey
	// AdminKeys (SENDQ_ADMIN_KEYS) are accepted beside Keys and see and
	// change every email. Used only when Keys is not empty.
	AdminKeys []APIKey
	// AllowedFrom lists addresses (a@x.com) and domains (@x.com) that may
	// be used as From, for every key. If empty, any.
	AllowedFrom []string
	// Limits bounds recipients and sets the default sender.
	Limits Limits
	// MaxBodyBytes is the largest request body. If zero, 25 MiB.
	MaxBodyBytes int64
	// MaxBatch (SENDQ_MAX_BATCH) is the most messages of one
	// POST /v1/emails/batch. If zero, 1,000 (DefaultMaxBatch).
	MaxBatch int
	// MaxBatchBytes (SENDQ_MAX_BATCH_BYTES) is the largest batch body; each
	// message is also held to MaxBodyBytes. If zero, 50 MiB.
	MaxBatchBytes int64
	// MaxAttempts is how many delivery attempts an email gets. If zero, 20.
	MaxAttempts int
	// Retention is how long a sent email stays visible. If zero, 24h.
	Retention time.Duration
	// AttemptTimeout bounds one delivery attempt, waiting for a pooled
	// connection included. If zero, 5m.
	AttemptTimeout time.Duration
	// RedisTimeout bounds every Redis call of a request, so a dead Redis
	// is a quick 503. If zero, 3s.
	RedisTimeout time.Duration
	// ListScanLimit bounds how many emails in one state GET /v1/emails
	// reads for a key that sees only its own (they share one asynq queue
	// with every other key's, so the listing reads them in the queue's
	// order and keeps the key's). If zero, 10,000: asynq's own cap on the
	// archive, which holds the failed emails.
	ListScanLimit int
	// RatePerKey limits POST /v1/emails per API key, across every API
	// process (GCRA in Redis). Zero: no limit.
	RatePerKey redis_rate.Limit
	// Events, if set, answers the event routes and stores the
	// email.canceled events of a DELETE with the canceled record.
	Events *events.Log
	// Topology names the queues of each priority (SENDQ_QUEUE_SHARDS);
	// nil is one queue per priority.
	Topology *queue.Topology
	// Scripts is the client the intake's own Lua scripts run on (the
	// Idempotency-Key claim). `sendq serve` passes one that
	// queue.ScriptsPipelined returned on an automatic pipeliner of the
	// claims' own, so that concurrent claims share pipelines, each within
	// its request's deadline, without taking turns with the enqueues on
	// theirs. If nil, the rdb given to New.
	Scripts redis.UniversalClient
	// Logger; if nil, slog.Default().
	Logger *slog.Logger
	// Metrics; required.
	Metrics *metrics.Metrics

	// Suppression is the suppression list, checked for every recipient
	// at intake and served under /v1/suppressions. Nil: no list
	// (SENDQ_SUPPRESSION=false).
	Suppression *suppression.List
	// Signer verifies one-click unsubscribe tokens. With PublicURL it
	// lets a send ask for ListUnsubscribe. Nil: no unsubscribe links.
	Signer *token.Signer
	// PublicURL is where the API is reached from outside; unsubscribe
	// links point at it. The worker builds them with the same value.
	PublicURL string
	// Notifier hears of unsubscribes. Nil: nobody.
	Notifier suppression.Notifier
}

// API is the HTTP intake and status service.
type API struct {
	cfg   Config
	keys  []APIKey // Keys, then AdminKeys marked admin
	rdb   redis.UniversalClient
	enq   Enqueuer
	insp  *asynq.Inspector
	look  *queue.Lookup
	admin *queue.Admin
	store *queue.Store
	rate  *redis_rate.Limiter
	topo  *queue.Topology
	log   *slog.Logger
	m     *metrics.Metrics
	tpl   *templates.Store
	now   func() time.Time
}

// New returns the API on rdb. enq stores tasks; insp and store answer
// status queries.
func New(rdb redis.UniversalClient, enq Enqueuer, insp *asynq.Inspector, store *queue.Store, cfg Config) (*API, error) {
	if cfg.Metrics == nil {
		return nil, errors.New("producer config: Metrics is required")
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = 25 << 20
	}
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = DefaultMaxBatch
	}
	if cfg.MaxBatchBytes <= 0 {
		cfg.MaxBatchBytes = DefaultMaxBatchBytes
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 20
	}
	if cfg.Retention <= 0 {
		cfg.Retention = 24 * time.Hour
	}
	if cfg.AttemptTimeout <= 0 {
		cfg.AttemptTimeout = 5 * time.Minute
	}
	if cfg.RedisTimeout <= 0 {
		cfg.RedisTimeout = 3 * time.Second
	}
	if cfg.ListScanLimit <= 0 {
		cfg.ListScanLimit = 10000
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Topology == nil {
		cfg.Topology = queue.DefaultTopology
	}
	if cfg.Scripts == nil {
		cfg.Scripts = rdb
	}
	var keys []APIKey
	if len(cfg.Keys) > 0 {
		keys = append(keys, cfg.Keys...)
		for _, k := range cfg.AdminKeys {
			k.admin = true // last, so that a key in both lists is an admin
			keys = append(keys, k)
		}
	}
	return &API{
		cfg: cfg, keys: keys, rdb: rdb, enq: enq, insp: insp, store: store,
		look:  &queue.Lookup{Inspector: insp, Store: store, Topology: cfg.Topology},
		admin: &queue.Admin{Inspector: insp, Store: store, Topology: cfg.Topology, Enqueuer: enq},
		rate:  redis_rate.NewLimiter(rdb),
		topo:  cfg.Topology,
		tpl:   templates.NewStore(rdb),
		log:   cfg.Logger, m: cfg.Metrics, now: time.Now,
	}, nil
}

// Register adds the /v1 routes and the connector's (compat.go) to mux.
func (a *API) Register(mux *http.ServeMux) {
	a.registerConnector(mux)
	mux.Handle("POST /v1/emails", a.authorized(a.send))
	mux.Handle("GET /v1/emails", a.authorized(a.list))
	mux.Handle("POST /v1/emails/batch", a.authorized(a.sendBatch))
	mux.Handle("GET /v1/batches/{id}", a.authorized(a.batchStatus))
	mux.Handle("DELETE /v1/batches/{id}", a.authorized(a.cancelBatch))
	mux.Handle("GET /v1/emails/{id}", a.authorized(a.status))
	mux.Handle("POST /v1/emails/{id}/retry", a.authorized(a.retry))
	mux.Handle("DELETE /v1/emails/{id}", a.authorized(a.cancel))
	if a.cfg.Events != nil {
		mux.Handle("GET /v1/emails/{id}/events", a.authorized(a.emailEvents))
		mux.Handle("GET /v1/events", a.authorized(a.eventLog))
	}
	mux.Handle("GET /v1/suppressions", a.authorized(a.listSuppressions))
	mux.Handle("GET /v1/suppressions/{address}", a.authorized(a.getSuppression))
	mux.Handle("PUT /v1/suppressions/{address}", a.authorized(a.putSuppression))
	mux.Handle("DELETE /v1/suppressions/{address}", a.authorized(a.deleteSuppression))
	a.registerTemplates(mux)
	// RFC 8058: the link itself is the credential (a signed token).
	mux.HandleFunc("GET /v1/unsubscribe/{token}", a.unsubscribePage)
	mux.HandleFunc("POST /v1/unsubscribe/{token}", a.unsubscribe)
}

type keyCtx struct{}

func (a *API) authorized(h func(http.ResponseWriter, *http.Request, *APIKey)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(a.keys) == 0 {
			h(w, r, &APIKey{ID: "anonymous", admin: true})
			return
		}
		k, ok := authenticate(a.keys, r)
		if !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="sendq"`)
			WriteError(w, http.StatusUnauthorized, "unauthorized", "Authorization", "missing or unknown API key (send Authorization: Bearer KEY)")
			return
		}
		h(w, r, k)
	})
}

// owner is what an email sent with k records as its owner: none when the
// intake has no keys.
func (a *API) owner(k *APIKey) string {
	if len(a.keys) == 0 {
		return ""
	}
	return k.Owner()
}

// scope is the owner whose emails k may see and change: "" (every email)
// for an admin key, or when the intake has no keys.
func (a *API) scope(k *APIKey) string {
	if k.admin {
		return ""
	}
	return k.Owner()
}

// Accepted is the body of a 202.
type Accepted struct {
	ID     string `json:"id"`
	Status string `json:"status"`
}

func (a *API) send(w http.ResponseWriter, r *http.Request, key *APIKey) {
	if !isJSON(r.Header.Get("Content-Type")) {
		WriteError(w, http.StatusUnsupportedMediaType, "unsupported_media_type", "Content-Type", "Content-Type must be application/json or text/json")
		return
	}
	// A body declared too large is refused before a byte of it is read:
	// a client that sent Expect: 100-continue then gets the 413 instead of
	// 100 Continue (net/http sends that on the first read of the body).
	if r.ContentLength > a.cfg.MaxBodyBytes {
		a.tooLarge(w)
		return
	}
	body, err := readBody(http.MaxBytesReader(w, r.Body, a.cfg.MaxBodyBytes), r.ContentLength)
	if err != nil {
		var mbe *http.MaxBytesError
		var ne net.Error
		switch {
		case errors.As(err, &mbe):
			a.tooLarge(w)
		case errors.As(err, &ne) && ne.Timeout():
			a.readTimedOut(w)
		default:
			WriteError(w, http.StatusBadRequest, "invalid_body", "", "could not read the body")
		}
		return
	}
	var e *queue.Email
	rq, err := decodeRequest(body)
	if err == nil {
		tctx, cancel := context.WithTimeout(r.Context(), a.cfg.RedisTimeout)
		e, err = rq.emailFrom(a.cfg.Limits, a.templateSource(tctx, key))
		cancel()
	}
	if err == nil {
		err = checkSendAt(e.SendAt, a.now(), a.cfg.Limits)
	}
	var se *sourceError
	if errors.As(err, &se) {
		a.unavailable(w, se.err)
		return
	}
	if rq != nil && rq.Template != nil {
		var fe *FieldError
		errors.As(err, &fe)
		a.countTemplated(e, fe)
	}
	if err != nil {
		var fe *FieldError
		if errors.As(err, &fe) {
			WriteError(w, http.StatusBadRequest, fe.Code, fe.Field, fe.Message)
			return
		}
		WriteError(w, http.StatusBadRequest, "invalid_body", "", err.Error())
		return
	}
	if e.ListUnsubscribe && (a.cfg.Signer == nil || a.cfg.PublicURL == "") {
		WriteError(w, http.StatusBadRequest, "invalid_field", "ListUnsubscribe",
			"this server makes no unsubscribe links: it needs SENDQ_PUBLIC_URL and SENDQ_SIGNING_KEY")
		return
	}
	// Every address that mail or reports about it go to on the sender's
	// behalf is held to the allow-lists: the envelope sender (where DSNs
	// go) and the read-receipt address (where MDNs go).
	for _, f := range []struct{ field, addr string }{{"From", e.From.Address}, {"DeliveryReceipt", e.ReturnPath}, {"ReadReceipt", e.ReadReceipt}} {
		if f.addr == "" {
			continue
		}
		if !allowed(a.cfg.AllowedFrom, f.addr) {
			WriteError(w, http.StatusForbidden, "sender_not_allowed", f.field, fmt.Sprintf("%s is not an allowed sender (SENDQ_ALLOWED_FROM)", f.addr))
			return
		}
		if !allowed(key.AllowedFrom, f.addr) {
			WriteError(w, http.StatusForbidden, "sender_not_allowed", f.field, fmt.Sprintf("this API key may not send as %s", f.addr))
			return
		}
	}

	idemKey := r.Header.Get("Idempotency-Key")
	if idemKey != "" && (len(idemKey) > 255 || hasControl(idemKey)) {
		WriteError(w, http.StatusBadRequest, "invalid_header", "Idempotency-Key", "must be at most 255 printable characters")
		return
	}
	if idemKey != "" {
		// The email id is derived from the key, so asynq's own task-id
		// check makes the second request with the same key conflict,
		// atomically, at no extra Redis round trip.
		e.ID = IdempotentID(key.ID, idemKey)
		e.BodyHash = bodyHash(body)
	} else {
		e.ID = uuid.Must(uuid.NewV7()).String()
	}
	e.CreatedAt = a.now().UTC()
	e.Owner = a.owner(key)

	ctx, cancel := context.WithTimeout(r.Context(), a.cfg.RedisTimeout)
	defer cancel()
	if !a.cfg.RatePerKey.IsZero() {
		res, err := a.rate.Allow(ctx, queue.IntakeRateKey(key.ID), a.cfg.RatePerKey)
		if err != nil {
			a.unavailable(w, err)
			return
		}
		if res.Allowed == 0 {
			a.m.RateLimited.WithLabelValues("intake").Inc()
			w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(res.RetryAfter.Seconds()))))
			WriteError(w, http.StatusTooManyRequests, "rate_limited", "Authorization",
				fmt.Sprintf("this API key may send %s; retry after %s", a.cfg.RatePerKey, res.RetryAfter.Round(time.Millisecond)))
			return
		}
	}

	if err := a.checkSuppressed(ctx, e); err != nil {
		a.unavailable(w, err)
		return
	}

	if e.Priority == "" {
		e.Priority = queue.PriorityNormal
	}
	first, err := a.enqueue(ctx, e, idemKey != "")
	var conflict *idemConflict
	switch {
	case errors.As(err, &conflict):
		WriteError(w, http.StatusConflict, "idempotency_key_reused", "Idempotency-Key",
			"this key was used with a different body while that email is still kept (24 hours after it was sent by default)")
		return
	case errors.Is(err, errInvalidTask):
		WriteError(w, http.StatusBadRequest, "invalid_body", "", err.Error())
		return
	case err != nil:
		// A timeout leaves it open whether Redis ran the enqueue (a
		// frozen Redis runs it when it wakes): say so, and point at the
		// Idempotency-Key, which makes the retry safe either way.
		a.log.Error("enqueue failed", "email_id", e.ID, "err", err)
		w.Header().Set("Retry-After", "5")
		WriteError(w, http.StatusServiceUnavailable, "queue_unavailable", "",
			"the queue did not confirm the email; retry later, with the same Idempotency-Key to be sure it is sent once")
		return
	case first != nil:
		a.m.IdemReplays.Inc()
		a.accepted(w, first.ID, initialStatus(first))
		return
	}
	// From here on the email is in Redis: it is accepted.
	a.m.EmailsAccepted.Inc()
	a.m.RecipientsSuppressed.WithLabelValues(metrics.StageIntake).Add(float64(len(e.Suppressed)))
	a.accepted(w, e.ID, initialStatus(e))
}

func (a *API) tooLarge(w http.ResponseWriter) {
	WriteError(w, http.StatusRequestEntityTooLarge, "body_too_large", "", fmt.Sprintf("body is larger than %d bytes", a.cfg.MaxBodyBytes))
}

// readTimedOut answers a body that did not arrive within the server's read
// timeout. The write deadline, set when the headers were read, may be
// about to pass too: it is moved a few seconds on so that the client
// learns why, and the connection is closed after the answer.
func (a *API) readTimedOut(w http.ResponseWriter) {
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(5 * time.Second))
	w.Header().Set("Connection", "close")
	WriteError(w, http.StatusRequestTimeout, "request_timeout", "", "the body did not arrive within the server's read timeout")
}

// checkSuppressed notes in e the recipients on the suppression list: the
// email is still accepted for the others, and these are never sent to.
func (a *API) checkSuppressed(ctx context.Context, e *queue.Email) error {
	if a.cfg.Suppression == nil {
		return nil
	}
	rcpts := e.Recipients()
	found, err := a.cfg.Suppression.Check(ctx, rcpts)
	if err != nil {
		return err
	}
	for _, r := range rcpts {
		if en, ok := found[r]; ok {
			e.Suppressed = append(e.Suppressed, queue.Suppressed{Address: r, Reason: en.Reason})
		}
	}
	return nil
}

// initialStatus is the status the 202 reports: queued, or scheduled for a
// SendAt in the future.
func initialStatus(e *queue.Email) string {
	if !e.SendAt.IsZero() && e.SendAt.After(e.CreatedAt) {
		return queue.StatusScheduled
	}
	return queue.StatusQueued
}

// idemSpace is the UUID namespace of ids derived from idempotency keys.
var idemSpace = uuid.MustParse("5e4d0a11-7b1e-4c59-9a51-5e4d0a11c0de")

// IdempotentID is the email id of an Idempotency-Key sent with an API key:
// a name-based UUID (RFC 9562 version 5) of both, so two API keys never
// share an id and the key itself cannot be read back from the id.
func IdempotentID(keyID, idemKey string) string {
	return uuid.NewSHA1(idemSpace, []byte(keyID+"\x00"+idemKey)).String()
}

func bodyHash(body []byte) string {
	h := sha256.Sum256(body)
	return hex.EncodeToString(h[:])
}

func (a *API) accepted(w http.ResponseWriter, id, status string) {
	w.Header().Set("Location", "/v1/emails/"+id)
	WriteJSON(w, http.StatusAccepted, Accepted{ID: id, Status: status})
}

// isJSON reports whether a Content-Type is application/json or text/json
// (which the connector's definitions also name), with or without
// parameters.
func isJSON(contentType string) bool {
	if contentType == "application/json" { // no parameters to parse
		return true
	}
	mt, _, err := mime.ParseMediaType(contentType)
	return err == nil && (mt == "application/json" || mt == "text/json")
}

// readBody is io.ReadAll with a first buffer the size of the body when the
// request states it (up to 64 KiB, so that a client cannot make the server
// allocate more than it sends): one allocation instead of a few growing
// ones.
func readBody(r io.Reader, contentLength int64) ([]byte, error) {
	size := 512
	if contentLength > 0 {
		size = int(min(contentLength, 64<<10)) + 1 // +1: room to read the EOF
	}
	b := make([]byte, 0, size)
	for {
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err != nil {
			if err == io.EOF {
				err = nil
			}
			return b, err
		}
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
	}
}

func (a *API) unavailable(w http.ResponseWriter, err error) {
	a.log.Error("redis unavailable", "err", err)
	w.Header().Set("Retry-After", "5")
	WriteError(w, http.StatusServiceUnavailable, "queue_unavailable", "", "the queue is unavailable; retry later")
}

func validID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, c := range id {
		if !(c == '-' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}

func (a *API) status(w http.ResponseWriter, r *http.Request, key *APIKey) {
	id := r.PathValue("id")
	if !validID(id) {
		WriteError(w, http.StatusNotFound, "not_found", "id", "no email with this id")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.cfg.RedisTimeout)
	defer cancel()
	st, err := a.look.StatusFor(ctx, id, a.scope(key))
	switch {
	case errors.Is(err, queue.ErrNotFound):
		WriteError(w, http.StatusNotFound, "not_found", "id", "no email with this id")
	case err != nil:
		a.unavailable(w, err)
	default:
		WriteJSON(w, http.StatusOK, st)
	}
}

// List is the body of GET /v1/emails.
type List struct {
	Emails   []*queue.EmailStatus `json:"emails"`
	Status   string               `json:"status"`
	Page     int                  `json:"page"`
	PageSize int                  `json:"page_size"`
	Total    int                  `json:"total"`
	// Truncated: the listing for a key that sees only its own emails
	// read the first Config.ListScanLimit emails in this state and
	// stopped; Total counts the key's among them.
	Truncated bool `json:"truncated,omitempty"`
}

// scanBatch is how many tasks one read of that scan takes: the largest
// page_size, so a scan never holds more emails at once than a page does.
const scanBatch = 100

func (a *API) list(w http.ResponseWriter, r *http.Request, key *APIKey) {
	q := r.URL.Query()
	status := q.Get("status")
	if status == "" {
		status = queue.StatusFailed
	}
	type lister func(string, ...asynq.ListOption) ([]*asynq.TaskInfo, error)
	var fn lister
	var count func(*asynq.QueueInfo) int
	switch status {
	case queue.StatusFailed:
		fn, count = a.insp.ListArchivedTasks, func(qi *asynq.QueueInfo) int { return qi.Archived }
	case queue.StatusQueued:
		fn, count = a.insp.ListPendingTasks, func(qi *asynq.QueueInfo) int { return qi.Pending }
	case queue.StatusScheduled:
		fn, count = a.insp.ListScheduledTasks, func(qi *asynq.QueueInfo) int { return qi.Scheduled }
	case queue.StatusRetrying:
		fn, count = a.insp.ListRetryTasks, func(qi *asynq.QueueInfo) int { return qi.Retry }
	case queue.StatusSending:
		fn, count = a.insp.ListActiveTasks, func(qi *asynq.QueueInfo) int { return qi.Active }
	case queue.StatusSent:
		fn, count = a.insp.ListCompletedTasks, func(qi *asynq.QueueInfo) int { return qi.Completed }
	default:
		WriteError(w, http.StatusBadRequest, "invalid_parameter", "status", "status must be one of queued, scheduled, sending, retrying, sent, failed")
		return
	}
	page, size, ok := pageParams(w, q)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.cfg.RedisTimeout)
	defer cancel()
	out := List{Emails: []*queue.EmailStatus{}, Status: status, Page: page, PageSize: size}
	// Every queue (each priority, each shard) in turn, as one list.
	qis, err := a.topo.QueueInfos(a.insp, a.topo.All())
	if err != nil {
		a.unavailable(w, err)
		return
	}
	counts := make([]int, len(qis))
	for i, qi := range qis {
		counts[i] = count(qi)
		out.Total += counts[i]
	}
	if out.Total == 0 {
		WriteJSON(w, http.StatusOK, out)
		return
	}
	if scope := a.scope(key); scope != "" {
		if err := a.listOwn(ctx, &out, fn, qis, counts, scope); err != nil {
			a.unavailable(w, err)
			return
		}
		WriteJSON(w, http.StatusOK, out)
		return
	}
	skip, need := (page-1)*size, size
	for i, qi := range qis {
		if need == 0 {
			break
		}
		if skip >= counts[i] {
			skip -= counts[i]
			continue
		}
		infos, err := listRange(fn, qi.Queue, skip, need)
		if err != nil {
			a.unavailable(w, err)
			return
		}
		skip = 0
		need -= len(infos)
		for _, info := range infos {
			st, err := a.compose(ctx, info)
			if err != nil {
				a.unavailable(w, err)
				return
			}
			if st != nil {
				out.Emails = append(out.Emails, st)
			}
		}
	}
	WriteJSON(w, http.StatusOK, out)
}

// listRange returns up to n tasks of queue q from the from-th on, reading
// pages of scanBatch.
func listRange(fn func(string, ...asynq.ListOption) ([]*asynq.TaskInfo, error), q string, from, n int) ([]*asynq.TaskInfo, error) {
	var out []*asynq.TaskInfo
	for p := from / scanBatch; len(out) < n; p++ {
		infos, err := fn(q, asynq.Page(p+1), asynq.PageSize(scanBatch))
		if err != nil {
			return nil, err
		}
		for i, info := range infos {
			if p*scanBatch+i >= from && len(out) < n {
				out = append(out, info)
			}
		}
		if len(infos) < scanBatch {
			break
		}
	}
	return out, nil
}

// listOwn fills out with the page of the emails of owner among the first
// Config.ListScanLimit in the state fn lists, over the queues qis in turn
// (counts: their numbers in the state); out.Total is the number of all of
// them (the state's total when it comes in).
func (a *API) listOwn(ctx context.Context, out *List, fn func(string, ...asynq.ListOption) ([]*asynq.TaskInfo, error), qis []*asynq.QueueInfo, counts []int, owner string) error {
	inState := out.Total
	skip := (out.Page - 1) * out.PageSize
	out.Total = 0
	examined, batch := 0, min(scanBatch, a.cfg.ListScanLimit)
	for qi, q := range qis {
		if counts[qi] == 0 {
			continue
		}
		for p := 1; examined < a.cfg.ListScanLimit; p++ {
			infos, err := fn(q.Queue, asynq.Page(p), asynq.PageSize(batch))
			if err != nil {
				return err
			}
			examined += len(infos)
			for _, info := range infos {
				if o, err := queue.PayloadOwner(info.Payload); err != nil || o != owner {
					continue
				}
				out.Total++
				if out.Total <= skip || len(out.Emails) == out.PageSize {
					continue
				}
				st, err := a.compose(ctx, info)
				if err != nil {
					return err
				}
				if st != nil {
					out.Emails = append(out.Emails, st)
				}
			}
			if len(infos) < batch {
				break // the end of this queue's list in the state
			}
		}
	}
	out.Truncated = examined < inState
	return nil
}

// compose is the status of a listed task; nil for a task sendq did not
// write.
func (a *API) compose(ctx context.Context, info *asynq.TaskInfo) (*queue.EmailStatus, error) {
	rec, err := a.store.Get(ctx, info.ID)
	if err != nil && !errors.Is(err, queue.ErrNoRecord) {
		return nil, err
	}
	if err != nil {
		rec = nil
	}
	st, err := queue.Compose(info.ID, info, rec)
	if err != nil {
		return nil, nil // a task sendq did not write
	}
	return st, nil
}

// pageParams reads page (default 1) and page_size (default 50, at most
// 100) of a listing, or answers the 400 naming the parameter itself.
func pageParams(w http.ResponseWriter, q url.Values) (page, size int, ok bool) {
	page, err := intParam(q.Get("page"), 1, 1, 1<<20)
	if err != nil {
		WriteError(w, http.StatusBadRequest, "invalid_parameter", "page", err.Error())
		return 0, 0, false
	}
	size, err = intParam(q.Get("page_size"), 50, 1, 100)
	if err != nil {
		WriteError(w, http.StatusBadRequest, "invalid_parameter", "page_size", err.Error())
		return 0, 0, false
	}
	return page, size, true
}

func intParam(s string, def, lo, hi int) (int, error) {
	if s == "" {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < lo || n > hi {
		return 0, fmt.Errorf("must be a whole number from %d to %d", lo, hi)
	}
	return n, nil
}

func (a *API) retry(w http.ResponseWriter, r *http.Request, key *APIKey) {
	scope := a.scope(key)
	a.change(w, r, scope, func(ctx context.Context, id string) error {
		return a.admin.RetryFor(ctx, id, scope)
	})
}

func (a *API) cancel(w http.ResponseWriter, r *http.Request, key *APIKey) {
	scope := a.scope(key)
	a.change(w, r, scope, func(ctx context.Context, id string) error {
		if a.cfg.Events == nil {
			if err := a.admin.CancelFor(ctx, id, scope); err != nil {
				return err
			}
		} else {
			// The email.canceled events are written with the canceled
			// record; their hand-off follows (or the sweeper's).
			hook, handOff := a.cfg.Events.Cancel(ctx, a.store)
			if err := a.admin.CancelFor(ctx, id, scope, hook); err != nil {
				return err
			}
			if err := handOff(context.WithoutCancel(ctx)); err != nil {
				a.log.Warn("email.canceled events stored; their hand-off is left to the sweeper", "email_id", id, "err", err)
			}
		}
		a.m.EmailsFailed.WithLabelValues(queue.ReasonCanceled).Inc()
		return nil
	})
}

// change runs a retry or a cancel of an email of scope (Owns) and answers
// with the new status.
func (a *API) change(w http.ResponseWriter, r *http.Request, scope string, op func(context.Context, string) error) {
	id := r.PathValue("id")
	if !validID(id) {
		WriteError(w, http.StatusNotFound, "not_found", "id", "no email with this id")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.cfg.RedisTimeout)
	defer cancel()
	err := op(ctx, id)
	var ws *queue.ErrWrongState
	switch {
	case errors.Is(err, queue.ErrNotFound):
		WriteError(w, http.StatusNotFound, "not_found", "id", "no email with this id")
	case errors.As(err, &ws) && ws.Op == "retry":
		WriteError(w, http.StatusConflict, "not_failed", "id", ws.Error())
	case errors.As(err, &ws):
		WriteError(w, http.StatusConflict, "not_cancelable", "id", ws.Error())
	case err != nil:
		a.unavailable(w, err)
	default:
		a.writeStatus(ctx, w, id, scope)
	}
}

func (a *API) writeStatus(ctx context.Context, w http.ResponseWriter, id, scope string) {
	st, err := a.look.StatusFor(ctx, id, scope)
	if err != nil {
		a.unavailable(w, err)
		return
	}
	WriteJSON(w, http.StatusOK, st)
}
