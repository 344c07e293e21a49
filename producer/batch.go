package producer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
	"github.com/google/uuid"
	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/sendq/sendq/metrics"
	"github.com/sendq/sendq/queue"
)

// Defaults of the batch limits (Config.MaxBatch, Config.MaxBatchBytes).
const (
	DefaultMaxBatch      = 1000
	DefaultMaxBatchBytes = 50 << 20
)

// batchWorkers is how many emails of a batch are enqueued (or looked up,
// or canceled) at once: their Redis commands share pipelines (the
// client's AutoPipeliner) instead of waiting one round trip each.
const batchWorkers = 128

// batchRequest is the body of POST /v1/emails/batch. Defaults and each
// message are kept raw and decoded one by one as a request, so that every
// invalid message is reported, each under its own index.
type batchRequest struct {
	Defaults   jsontext.Value   `json:",case:ignore"`
	Messages   []jsontext.Value `json:",case:ignore"`
	Validation *string          `json:",case:ignore"`
}

// batchItem is one message: a request and its own IdempotencyKey.
type batchItem struct {
	request
	IdempotencyKey *string `json:",case:ignore"`
}

// BatchResult is the outcome of one message of a batch.
type BatchResult struct {
	Index  int          `json:"index"`
	ID     string       `json:"id,omitempty"`
	Status string       `json:"status,omitempty"`
	Error  *ErrorDetail `json:"error,omitempty"`
}

// BatchAnswer is the body of the answer to POST /v1/emails/batch.
type BatchAnswer struct {
	BatchID  string        `json:"batch_id"`
	Accepted int           `json:"accepted"`
	Rejected int           `json:"rejected"`
	Results  []BatchResult `json:"results"`
}

// batchItems is a decoded batch: the emails of the valid messages (nil
// where invalid) and the errors of the others.
type batchItems struct {
	emails  []*queue.Email
	idem    []string // each message's IdempotencyKey, "" if none
	results []BatchResult
	strict  bool
	invalid int
}

// decodeBatch parses a batch body. A *FieldError is a fault of the whole
// body (not JSON, an unknown member, a bad Defaults or Validation, no
// messages, too many); a message's own faults are in its result.
//
// src finds the templates the messages name (nil: none can be used); a
// batch reads each template version once, so every message naming the
// same template gets the same version. An error of src that is not the
// template's absence ends the decoding: it is returned as it is (Redis
// failed), not as a *FieldError.
func decodeBatch(body []byte, lim Limits, maxBatch int, maxItemBytes int64, now time.Time, src templateSource) (*batchItems, error) {
	body = bytes.TrimSpace(body)
	var br *batchRequest
	if err := jsonv2.Unmarshal(body, &br, requestOptions); err != nil {
		return nil, batchDecodeError(body, err)
	}
	if br == nil {
		return nil, &FieldError{Code: "invalid_json", Message: "body must be a JSON object"}
	}
	out := &batchItems{}
	switch v := deref(br.Validation); {
	case v == "" || strings.EqualFold(v, "permissive"):
	case strings.EqualFold(v, "strict"):
		out.strict = true
	default:
		return nil, fieldErr("Validation", "must be permissive or strict, got %q", v)
	}
	if len(br.Messages) == 0 {
		return nil, &FieldError{Field: "Messages", Code: "missing_field", Message: "Messages must hold at least one message"}
	}
	if len(br.Messages) > maxBatch {
		return nil, &FieldError{Field: "Messages", Code: "too_many_messages",
			Message: fmt.Sprintf("%d messages; the limit is %d (SENDQ_MAX_BATCH)", len(br.Messages), maxBatch)}
	}
	def := &request{}
	if d := bytes.TrimSpace(br.Defaults); len(d) > 0 && string(d) != "null" {
		r, err := decodeRequest(d)
		if err != nil {
			return nil, prefixed("Defaults", err)
		}
		def = r
	}
	out.emails = make([]*queue.Email, len(br.Messages))
	out.idem = make([]string, len(br.Messages))
	out.results = make([]BatchResult, len(br.Messages))
	// The messages are decoded (and rendered) on every core; what one
	// message says about another (a repeated IdempotencyKey) is checked
	// after, in order.
	type decoded struct {
		e   *queue.Email
		key string
		err error
	}
	dec := make([]decoded, len(br.Messages))
	src = src.once()
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), len(br.Messages)) {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < len(br.Messages); i = int(next.Add(1) - 1) {
				d := &dec[i]
				d.e, d.key, d.err = decodeItem(br.Messages[i], def, lim, maxItemBytes, now, src)
			}
		})
	}
	wg.Wait()
	seen := map[string]int{}
	for i, raw := range br.Messages {
		label := "Messages[" + strconv.Itoa(i) + "]"
		out.results[i].Index = i
		e, key, err := dec[i].e, dec[i].key, dec[i].err
		var ue *sourceError
		if errors.As(err, &ue) {
			return nil, ue
		}
		if err == nil && key != "" {
			if j, dup := seen[key]; dup {
				err = fieldErr("IdempotencyKey", "is the IdempotencyKey of Messages[%d] too", j)
			}
			seen[key] = i
		}
		if err != nil {
			fe := asFieldError(err)
			field := label
			if fe.Field != "" {
				// A missing variable is the message's, wherever its
				// other TemplateData came from.
				if fe.Code != "missing_variable" && fromDefaults(def, raw, fe.Field) {
					field = "Defaults." + fe.Field
				} else {
					field = label + "." + fe.Field
				}
			}
			out.results[i].Error = &ErrorDetail{Code: fe.Code, Field: field, Message: fe.Message}
			out.invalid++
			continue
		}
		out.emails[i], out.idem[i] = e, key
	}
	return out, nil
}

// decodeItem decodes one message over the defaults.
func decodeItem(raw jsontext.Value, def *request, lim Limits, maxBytes int64, now time.Time, src templateSource) (*queue.Email, string, error) {
	if int64(len(raw)) > maxBytes {
		return nil, "", &FieldError{Code: "body_too_large", Message: fmt.Sprintf("message is larger than %d bytes (the single-send limit)", maxBytes)}
	}
	var it *batchItem
	if err := jsonv2.Unmarshal(raw, &it, requestOptions); err != nil {
		return nil, "", decodeError(raw, err)
	}
	if it == nil {
		return nil, "", &FieldError{Code: "invalid_field", Message: "must be a JSON object"}
	}
	key := deref(it.IdempotencyKey)
	if key != "" && (len(key) > 255 || hasControl(key)) {
		return nil, "", fieldErr("IdempotencyKey", "must be at most 255 printable characters")
	}
	e, err := merge(def, &it.request).emailFrom(lim, src)
	if err == nil {
		err = checkSendAt(e.SendAt, now, lim)
	}
	if err != nil {
		return nil, "", err
	}
	return e, key, nil
}

// merge is item over def: each member the item gives replaces the
// default's, but for TemplateData, whose members are merged one by one
// (the item's winning, a null of its own included).
func merge(def, item *request) *request {
	out := *item
	dv, ov := reflect.ValueOf(def).Elem(), reflect.ValueOf(&out).Elem()
	for i := range ov.NumField() {
		if f := ov.Field(i); f.IsNil() {
			f.Set(dv.Field(i))
		}
	}
	if def.TemplateData != nil && item.TemplateData != nil {
		out.TemplateData = mergeData(def.TemplateData, item.TemplateData)
	}
	return &out
}

// mergeData is item's members over def's. Either not an object (a fault
// the decoding of TemplateData reports) is item as it is.
func mergeData(def, item jsontext.Value) jsontext.Value {
	var d, it map[string]jsontext.Value
	if jsonv2.Unmarshal(def, &d) != nil || jsonv2.Unmarshal(item, &it) != nil || d == nil || it == nil {
		return item
	}
	for k, v := range it {
		d[k] = v
	}
	b, err := jsonv2.Marshal(d, jsonv2.Deterministic(true))
	if err != nil {
		return item
	}
	return b
}

// fromDefaults reports whether the member field (Attachments[0].FileName:
// its first name counts) came from the defaults, not from the message raw.
func fromDefaults(def *request, raw jsontext.Value, field string) bool {
	top := field
	if i := strings.IndexAny(top, ".["); i >= 0 {
		top = top[:i]
	}
	dv := reflect.ValueOf(def).Elem()
	f := dv.FieldByNameFunc(func(n string) bool { return n == top })
	if !f.IsValid() || f.IsNil() {
		return false
	}
	var it batchItem
	if jsonv2.Unmarshal(raw, &it, requestOptions) != nil {
		return false
	}
	return reflect.ValueOf(&it.request).Elem().FieldByName(top).IsNil()
}

func asFieldError(err error) *FieldError {
	var fe *FieldError
	if errors.As(err, &fe) {
		return fe
	}
	return &FieldError{Code: "invalid_body", Message: err.Error()}
}

// prefixed is err with its field under prefix (Defaults.To).
func prefixed(prefix string, err error) *FieldError {
	fe := *asFieldError(err)
	if fe.Code == "invalid_json" {
		fe.Code = "invalid_field"
	}
	if fe.Field == "" {
		fe.Field = prefix
	} else {
		fe.Field = prefix + "." + fe.Field
	}
	return &fe
}

// batchDecodeError is the *FieldError of the whole batch body.
func batchDecodeError(body []byte, err error) *FieldError {
	if !jsontext.Value(body).IsValid(jsonv2.JoinOptions(jsontext.AllowInvalidUTF8(true), jsontext.AllowDuplicateNames(true))) {
		return decodeError(body, err)
	}
	var syn *jsontext.SyntacticError
	var sem *jsonv2.SemanticError
	switch {
	case errors.As(err, &syn):
		field, _ := firstToken(syn.JSONPointer)
		if syn.Err == jsontext.ErrDuplicateName {
			if field == "" {
				field = `""`
			}
			return &FieldError{Field: field, Code: "duplicate_field", Message: "a member is given twice (names match case-insensitively)"}
		}
		if field == "" {
			return &FieldError{Code: "invalid_json", Message: "body is not valid Unicode text"}
		}
		return fieldErr(field, "is not valid Unicode text")
	case errors.As(err, &sem) && sem.JSONPointer == "":
		return &FieldError{Code: "invalid_json", Message: "body must be a JSON object"}
	case errors.As(err, &sem) && sem.Err == jsonv2.ErrUnknownName:
		name := sem.JSONPointer.LastToken()
		field := name
		if field == "" {
			field = `""` // a member with an empty name
		}
		return &FieldError{Field: field, Code: "unknown_field", Message: fmt.Sprintf("unknown field %q (a batch has Defaults, Messages and Validation)", name)}
	case errors.As(err, &sem):
		field, _ := firstToken(sem.JSONPointer)
		if field == "" {
			field = `""`
		}
		switch {
		case strings.EqualFold(field, "Messages"):
			return fieldErr("Messages", "must be an array of objects")
		case strings.EqualFold(field, "Validation"):
			return fieldErr("Validation", "must be permissive or strict")
		}
		return fieldErr(field, "must not be a JSON %s", sem.JSONKind)
	}
	return &FieldError{Code: "invalid_json", Message: "body is not valid JSON"}
}

// DecodeBatch parses and validates a batch body as POST /v1/emails/batch
// does (limits lim, at most maxBatch messages): the emails of the valid
// messages (nil where invalid) and one result per message, or a
// *FieldError for the body as a whole. For the fuzz target and tests.
func DecodeBatch(body []byte, lim Limits, maxBatch int) ([]*queue.Email, []BatchResult, error) {
	b, err := decodeBatch(body, lim, maxBatch, 25<<20, time.Now(), nil)
	if err != nil {
		return nil, nil, err
	}
	return b.emails, b.results, nil
}

// batchSpace is the UUID namespace of batch ids derived from an
// Idempotency-Key, and of the ids of their messages.
var batchSpace = uuid.MustParse("5e4d0a11-7b1e-4c59-9a51-ba7c40000000")

// batchKey holds the ids of a batch's accepted emails, in order;
// batchMetaKey its owner and, once answered, the answer (one hash tag: one
// Cluster slot).
func batchKey(id string) string     { return "sendq:batch:{" + id + "}" }
func batchMetaKey(id string) string { return "sendq:batch:{" + id + "}:meta" }

func (a *API) sendBatch(w http.ResponseWriter, r *http.Request, key *APIKey) {
	if !isJSON(r.Header.Get("Content-Type")) {
		WriteError(w, http.StatusUnsupportedMediaType, "unsupported_media_type", "Content-Type", "Content-Type must be application/json or text/json")
		return
	}
	tooLarge := func() {
		WriteError(w, http.StatusRequestEntityTooLarge, "body_too_large", "",
			fmt.Sprintf("batch body is larger than %d bytes (SENDQ_MAX_BATCH_BYTES)", a.cfg.MaxBatchBytes))
	}
	if r.ContentLength > a.cfg.MaxBatchBytes {
		tooLarge()
		return
	}
	idemKey := r.Header.Get("Idempotency-Key")
	if idemKey != "" && (len(idemKey) > 255 || hasControl(idemKey)) {
		WriteError(w, http.StatusBadRequest, "invalid_header", "Idempotency-Key", "must be at most 255 printable characters")
		return
	}
	body, err := readBody(http.MaxBytesReader(w, r.Body, a.cfg.MaxBatchBytes), r.ContentLength)
	if err != nil {
		var mbe *http.MaxBytesError
		var ne net.Error
		switch {
		case errors.As(err, &mbe):
			tooLarge()
		case errors.As(err, &ne) && ne.Timeout():
			a.readTimedOut(w)
		default:
			WriteError(w, http.StatusBadRequest, "invalid_body", "", "could not read the body")
		}
		return
	}
	now := a.now()
	ctx, cancel := context.WithTimeout(r.Context(), a.cfg.RedisTimeout)
	defer cancel()

	var batchID, hash string
	if idemKey != "" {
		batchID = uuid.NewSHA1(batchSpace, []byte(key.ID+"\x00"+idemKey)).String()
		hash = bodyHash(body)
		meta, err := a.rdb.HGetAll(ctx, batchMetaKey(batchID)).Result()
		if err != nil {
			a.unavailable(w, err)
			return
		}
		if meta["answer"] != "" {
			if meta["hash"] != hash {
				WriteError(w, http.StatusConflict, "idempotency_key_reused", "Idempotency-Key",
					"this key was used for a batch with a different body while that batch is still kept")
				return
			}
			code, _ := strconv.Atoi(meta["code"])
			if code == http.StatusAccepted {
				w.Header().Set("Location", "/v1/batches/"+batchID)
			}
			a.m.IdemReplays.Inc()
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("X-Content-Type-Options", "nosniff")
			w.WriteHeader(code)
			_, _ = w.Write([]byte(meta["answer"]))
			return
		}
	} else {
		batchID = uuid.Must(uuid.NewV7()).String()
	}

	b, err := decodeBatch(body, a.cfg.Limits, a.cfg.MaxBatch, a.cfg.MaxBodyBytes, now, a.templateSource(ctx, key))
	if a.decodeFailed(w, err) {
		return
	}
	for i, e := range b.emails {
		if e != nil {
			a.countTemplated(e, nil)
		} else if d := b.results[i].Error; d != nil {
			a.countTemplated(nil, &FieldError{Field: d.Field, Code: d.Code})
		}
	}
	// What a single send refuses with a 403 or a 400 beyond the body's
	// own rules is one message's fault here.
	for i, e := range b.emails {
		if e == nil {
			continue
		}
		if fe := a.refused(e, key); fe != nil {
			fe.Field = "Messages[" + strconv.Itoa(i) + "]." + fe.Field
			b.results[i].Error, b.emails[i] = &ErrorDetail{Code: fe.Code, Field: fe.Field, Message: fe.Message}, nil
			b.invalid++
		}
	}
	ans := BatchAnswer{BatchID: batchID, Results: b.results}
	if b.strict && b.invalid > 0 {
		for i, e := range b.emails {
			if e != nil {
				ans.Results[i].Error = &ErrorDetail{Code: "not_queued", Field: "Validation",
					Message: "not queued: Validation is strict and another message is invalid"}
				b.emails[i] = nil
			}
		}
	}
	var ids []string
	for i, e := range b.emails {
		if e == nil {
			continue
		}
		switch {
		case b.idem[i] != "":
			e.ID = IdempotentID(key.ID, b.idem[i])
		case idemKey != "":
			// A retry of the batch (after a 503, a timeout) gives each
			// message the same id again: asynq's task-id check keeps it once.
			e.ID = uuid.NewSHA1(batchSpace, []byte(batchID+"\x00"+strconv.Itoa(i))).String()
		default:
			e.ID = uuid.Must(uuid.NewV7()).String()
		}
		e.BatchID, e.CreatedAt, e.Owner = batchID, now.UTC(), a.owner(key)
		if e.Priority == "" {
			e.Priority = queue.PriorityBulk
		}
		ids = append(ids, e.ID)
	}
	ans.Accepted, ans.Rejected = len(ids), len(b.results)-len(ids)
	// The emails' own work: RedisTimeout per 1,000 from here, not from the
	// request's start (decoding 1,000 messages takes its time).
	ctx, cancel = a.batchContext(r.Context(), len(ids))
	defer cancel()

	if len(ids) > 0 {
		if lim := a.cfg.RatePerKey; !lim.IsZero() && len(ids) > lim.Burst {
			// The limiter never admits more than its burst at once: a
			// 429 would be retried for ever.
			WriteError(w, http.StatusBadRequest, "batch_over_rate", "Messages",
				fmt.Sprintf("this batch has %d emails to queue and this API key may send %s: send batches of at most %d", len(ids), lim, lim.Burst))
			return
		}
		if !a.cfg.RatePerKey.IsZero() {
			res, err := a.rate.AllowN(ctx, queue.IntakeRateKey(key.ID), a.cfg.RatePerKey, len(ids))
			if err != nil {
				a.unavailable(w, err)
				return
			}
			if res.Allowed == 0 {
				a.m.RateLimited.WithLabelValues("intake").Inc()
				w.Header().Set("Retry-After", strconv.Itoa(int(max(1, res.RetryAfter.Seconds()+0.999))))
				WriteError(w, http.StatusTooManyRequests, "rate_limited", "Authorization",
					fmt.Sprintf("this API key may send %s; this batch has %d emails", a.cfg.RatePerKey, len(ids)))
				return
			}
		}
		// The ids first, so that the batch can be looked up and canceled
		// whatever happens to the enqueues.
		ttl := a.claimTTL()
		var tried *redis.BoolCmd
		_, err := a.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
			// tried is set by the first try of the batch: a later one (an
			// Idempotency-Key retry after a 503) may find its emails held.
			tried = p.HSetNX(ctx, batchMetaKey(batchID), "tried", 1)
			p.Del(ctx, batchKey(batchID))
			args := make([]any, len(ids))
			for i, id := range ids {
				args[i] = id
			}
			p.RPush(ctx, batchKey(batchID), args...)
			p.HSet(ctx, batchMetaKey(batchID), "owner", a.owner(key), "total", len(ids))
			p.Expire(ctx, batchKey(batchID), ttl)
			p.Expire(ctx, batchMetaKey(batchID), ttl)
			return nil
		})
		if err != nil {
			a.unavailable(w, err)
			return
		}
		if err := a.enqueueBatch(ctx, b, &ans, batchID, idemKey != "" && !tried.Val()); err != nil {
			a.log.Error("batch enqueue failed", "batch_id", batchID, "err", err)
			w.Header().Set("Retry-After", "5")
			WriteError(w, http.StatusServiceUnavailable, "queue_unavailable", "",
				"the queue did not confirm every email of the batch; retry later with the same Idempotency-Key to have each queued once")
			return
		}
	}
	code := http.StatusAccepted
	if ans.Accepted == 0 {
		code = http.StatusBadRequest
	}
	raw, err := json.Marshal(ans)
	if err != nil {
		WriteError(w, http.StatusInternalServerError, "internal", "", "could not write the answer")
		return
	}
	raw = append(raw, '\n')
	if idemKey != "" {
		err := a.rdb.HSet(ctx, batchMetaKey(batchID), "owner", a.owner(key), "answer", raw, "hash", hash, "code", code).Err()
		if err == nil {
			err = a.rdb.Expire(ctx, batchMetaKey(batchID), a.claimTTL()).Err()
		}
		if err != nil {
			// The emails are queued; a replay finds them by their ids.
			a.log.Warn("batch answer not stored", "batch_id", batchID, "err", err)
		}
	}
	if code == http.StatusAccepted {
		w.Header().Set("Location", "/v1/batches/"+batchID)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = w.Write(raw)
}

// refused is the fault a single send would answer for e beyond its body's
// rules: unsubscribe links this server cannot make, a sender not allowed.
func (a *API) refused(e *queue.Email, key *APIKey) *FieldError {
	if e.ListUnsubscribe && (a.cfg.Signer == nil || a.cfg.PublicURL == "") {
		return fieldErr("ListUnsubscribe", "this server makes no unsubscribe links: it needs SENDQ_PUBLIC_URL and SENDQ_SIGNING_KEY")
	}
	for _, f := range []struct{ field, addr string }{{"From", e.From.Address}, {"DeliveryReceipt", e.ReturnPath}, {"ReadReceipt", e.ReadReceipt}} {
		if f.addr == "" {
			continue
		}
		if !allowed(a.cfg.AllowedFrom, f.addr) {
			return &FieldError{Field: f.field, Code: "sender_not_allowed", Message: fmt.Sprintf("%s is not an allowed sender (SENDQ_ALLOWED_FROM)", f.addr)}
		}
		if !allowed(key.AllowedFrom, f.addr) {
			return &FieldError{Field: f.field, Code: "sender_not_allowed", Message: fmt.Sprintf("this API key may not send as %s", f.addr)}
		}
	}
	return nil
}

// batchClaimPrefix begins the value of an item's Idempotency-Key claim
// (claimKey) when a batch holds the email: "batch:" and the batch id. A
// single send claims with its queue's name.
const batchClaimPrefix = "batch:"

// enqueueBatch queues the valid emails of batch batchID and fills their
// results. The emails go into chunk tasks (queue.TypeSendChunk) of up to
// queue.ChunkSize emails that share a priority and a time to send, each
// email with its own record (queue.Store.Hold): the records of the whole
// batch in one round trip, then one asynq enqueue per chunk. A retry of a
// batch with an Idempotency-Key (again) has the ids, the chunks and their
// task ids of the first try, and writes only the records the first try
// did not (their state must not go back to queued), so each email is
// queued once. An error is Redis's: some may be queued.
func (a *API) enqueueBatch(ctx context.Context, b *batchItems, ans *BatchAnswer, batchID string, again bool) error {
	var idx []int // the emails to queue, in order
	for i, e := range b.emails {
		if e != nil {
			idx = append(idx, i)
		}
	}
	if err := a.suppressBatch(ctx, b.emails, idx); err != nil {
		return err
	}
	idx, claimedBefore, err := a.claimItems(ctx, b, ans, batchID, idx)
	if err != nil {
		return err
	}
	if err := a.shareAttachments(ctx, b.emails, idx, batchID); err != nil {
		return err
	}
	chunks := chunkBatch(b.emails, idx)
	held := make([]queue.Held, 0, len(idx))
	for k := range chunks {
		c := &chunks[k]
		c.ids = make([]string, len(c.idx))
		for j, i := range c.idx {
			c.ids[j] = b.emails[i].ID
		}
		c.id = queue.ChunkID(batchID, c.ids)
		for _, i := range c.idx {
			held = append(held, queue.Held{Email: b.emails[i], Chunk: c.id, Queue: a.topo.Pick(c.priority, c.id),
				MaxAttempts: a.cfg.MaxAttempts, Retention: a.cfg.Retention, AttemptTimeout: a.cfg.AttemptTimeout,
				IfAbsent: again || claimedBefore[i]})
		}
	}
	if err := a.store.Hold(ctx, held, a.claimTTL()); err != nil {
		return err
	}
	var wg sync.WaitGroup
	errs := make([]error, len(chunks))
	for k, c := range chunks {
		wg.Go(func() {
			ch := &queue.Chunk{ID: c.id, BatchID: batchID, IDs: c.ids}
			opts := []asynq.Option{asynq.MaxRetry(a.cfg.MaxAttempts - 1)}
			if c.at > 0 {
				opts = append(opts, asynq.ProcessAt(time.Unix(c.at, 0)))
			}
			task, err := a.topo.NewChunkTask(ch, c.priority, opts...)
			if err == nil {
				_, err = a.enq.EnqueueContext(ctx, task)
			}
			if errors.Is(err, asynq.ErrTaskIDConflict) {
				err = nil // queued by an earlier try of the same batch
			}
			errs[k] = err
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	supp := 0
	for _, i := range idx {
		e := b.emails[i]
		ans.Results[i].ID, ans.Results[i].Status = e.ID, initialStatus(e)
		supp += len(e.Suppressed)
	}
	a.m.EmailsAccepted.Add(float64(len(idx)))
	a.m.RecipientsSuppressed.WithLabelValues(metrics.StageIntake).Add(float64(supp))
	return nil
}

// shareAttachments keeps the attachments that two or more emails idx of
// batch batchID have alike (those of its Defaults, typically) once, under
// the batch (queue.SharedAttachmentsKey), and makes those emails refer to
// them instead of holding a copy each: a 1 MB attachment in the Defaults
// of a 1,000-message batch is 1 MB in Redis, not 1 GB.
func (a *API) shareAttachments(ctx context.Context, emails []*queue.Email, idx []int, batchID string) error {
	sums := map[string][]int{}
	var order []string
	for _, i := range idx {
		if len(emails[i].Attachments) == 0 {
			continue
		}
		sum := queue.AttachmentsSum(emails[i].Attachments)
		if _, ok := sums[sum]; !ok {
			order = append(order, sum)
		}
		sums[sum] = append(sums[sum], i)
	}
	for _, sum := range order {
		alike := sums[sum]
		if len(alike) < 2 {
			continue
		}
		key := queue.SharedAttachmentsKey(batchID, sum)
		if err := a.store.Share(ctx, key, emails[alike[0]].Attachments, a.claimTTL()); err != nil {
			return err
		}
		for _, i := range alike {
			emails[i].Attachments, emails[i].SharedAttachments = nil, key
		}
	}
	return nil
}

// suppressBatch looks up every recipient of the emails idx at once (one
// round trip) and marks those on the suppression list, as
// checkSuppressed does for one email.
func (a *API) suppressBatch(ctx context.Context, emails []*queue.Email, idx []int) error {
	if a.cfg.Suppression == nil || len(idx) == 0 {
		return nil
	}
	seen := map[string]bool{}
	var addrs []string
	for _, i := range idx {
		for _, r := range emails[i].Recipients() {
			if !seen[r] {
				seen[r] = true
				addrs = append(addrs, r)
			}
		}
	}
	found, err := a.cfg.Suppression.Check(ctx, addrs)
	if err != nil || len(found) == 0 {
		return err
	}
	for _, i := range idx {
		e := emails[i]
		for _, r := range e.Recipients() {
			if en, ok := found[r]; ok {
				e.Suppressed = append(e.Suppressed, queue.Suppressed{Address: r, Reason: en.Reason})
			}
		}
	}
	return nil
}

// claimItems claims the Idempotency-Keys of the items idx that have one
// (one round trip) and returns the emails to queue: those whose key is
// new, or claimed by this batch already (an earlier try of it). An item
// whose key names an email still kept (sent singly, or in another batch)
// gets that email's id in its result and is not queued again. before
// marks the items whose key this batch had claimed already.
func (a *API) claimItems(ctx context.Context, b *batchItems, ans *BatchAnswer, batchID string, idx []int) (out []int, before map[int]bool, err error) {
	mine := batchClaimPrefix + batchID
	cmds := map[int]*redis.StatusCmd{}
	pipe := a.rdb.Pipeline()
	for _, i := range idx {
		if b.idem[i] != "" {
			cmds[i] = pipe.SetArgs(ctx, claimKey(b.emails[i].ID), mine, redis.SetArgs{Mode: "NX", Get: true, TTL: a.claimTTL()})
		}
	}
	if len(cmds) == 0 {
		return idx, nil, nil
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, nil, fmt.Errorf("claim idempotency keys: %w", err)
	}
	before = map[int]bool{}
	for _, i := range idx {
		c, keyed := cmds[i]
		if !keyed || c.Val() == "" || c.Val() == mine {
			before[i] = keyed && c.Val() == mine
			out = append(out, i)
			continue
		}
		e := b.emails[i]
		first, err := a.kept(ctx, c.Val(), e)
		var conflict *idemConflict
		if errors.As(err, &conflict) {
			err, first = nil, nil
		}
		if err != nil {
			return nil, nil, err
		}
		if first != nil {
			ans.Results[i].ID, ans.Results[i].Status = first.ID, initialStatus(first)
			continue
		}
		// Forgotten: a new email, this batch's.
		if err := a.rdb.Set(ctx, claimKey(e.ID), mine, a.claimTTL()).Err(); err != nil {
			return nil, nil, fmt.Errorf("claim idempotency key: %w", err)
		}
		out = append(out, i)
	}
	return out, before, nil
}

// batchChunk is one chunk of a batch: the priority and time to send
// (Unix seconds as asynq schedules, 0 for now) its emails share, their
// indexes and ids, and its id (queue.ChunkID).
type batchChunk struct {
	priority string
	at       int64
	idx      []int
	ids      []string
	id       string
}

// chunkBatch splits the emails idx into chunks of at most
// queue.ChunkSize that share a priority and a time to send, in order of
// first appearance: the same emails make the same chunks.
func chunkBatch(emails []*queue.Email, idx []int) []batchChunk {
	type group struct {
		priority string
		at       int64
	}
	open := map[group]int{} // the group's last chunk, in out
	var out []batchChunk
	for _, i := range idx {
		e := emails[i]
		g := group{priority: e.PriorityOrNormal()}
		if initialStatus(e) == queue.StatusScheduled {
			g.at = processAt(e.SendAt).Unix()
		}
		k, ok := open[g]
		if !ok || len(out[k].idx) == queue.ChunkSize {
			out = append(out, batchChunk{priority: g.priority, at: g.at})
			k = len(out) - 1
			open[g] = k
		}
		out[k].idx = append(out[k].idx, i)
	}
	return out
}

// BatchStatus is the body of GET /v1/batches/{id}.
type BatchStatus struct {
	BatchID  string         `json:"batch_id"`
	Total    int            `json:"total"`
	Counts   map[string]int `json:"counts"`
	Emails   []BatchEmail   `json:"emails"`
	Page     int            `json:"page"`
	PageSize int            `json:"page_size"`
}

// BatchEmail is one email of a batch in its status.
type BatchEmail struct {
	ID     string `json:"id"`
	Status string `json:"status"`
}

// BatchCanceled is the body of DELETE /v1/batches/{id}.
type BatchCanceled struct {
	Canceled    int `json:"canceled"`
	NotCanceled int `json:"not_canceled"`
}

// batchIDs returns the ids of batch id if key may see it; ok false
// answered the 404 or 503.
func (a *API) batchIDs(ctx context.Context, w http.ResponseWriter, r *http.Request, key *APIKey) (string, []string, bool) {
	id := r.PathValue("id")
	notFound := func() { WriteError(w, http.StatusNotFound, "not_found", "id", "no batch with this id") }
	if !validID(id) {
		notFound()
		return "", nil, false
	}
	var owner *redis.StringCmd
	var list *redis.StringSliceCmd
	_, err := a.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		owner = p.HGet(ctx, batchMetaKey(id), "owner")
		list = p.LRange(ctx, batchKey(id), 0, -1)
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		a.unavailable(w, err)
		return "", nil, false
	}
	if owner.Err() != nil || len(list.Val()) == 0 || !queue.Owns(a.scope(key), owner.Val()) {
		notFound()
		return "", nil, false
	}
	return id, list.Val(), true
}

// batchContext bounds the work on n emails of a batch: RedisTimeout for
// every 1,000 begun (2,000 cancels take about 0.6 s on a shared 2-core
// machine: BenchmarkBatchCancel).
func (a *API) batchContext(ctx context.Context, n int) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, a.cfg.RedisTimeout*time.Duration(1+n/1000))
}

// each runs f on every id, batchWorkers at a time; the first error.
func each(ids []string, f func(i int, id string) error) error {
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	work := make(chan int)
	for range min(batchWorkers, len(ids)) {
		wg.Go(func() {
			for i := range work {
				if err := f(i, ids[i]); err != nil {
					once.Do(func() { first = err })
				}
			}
		})
	}
	for i := range ids {
		work <- i
	}
	close(work)
	wg.Wait()
	return first
}

func (a *API) batchStatus(w http.ResponseWriter, r *http.Request, key *APIKey) {
	page, size, ok := pageParams(w, r.URL.Query())
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.cfg.RedisTimeout)
	defer cancel()
	id, ids, ok := a.batchIDs(ctx, w, r, key)
	if !ok {
		return
	}
	ctx, cancel = a.batchContext(r.Context(), len(ids))
	defer cancel()
	// The emails its chunks hold: their records, in one round trip; the
	// others (left for a task of their own) one by one.
	statuses, err := a.store.HeldStates(ctx, ids)
	if err != nil {
		a.unavailable(w, err)
		return
	}
	err = each(ids, func(i int, eid string) error {
		if statuses[i] != "" {
			return nil
		}
		st, err := a.look.Status(ctx, eid)
		switch {
		case errors.Is(err, queue.ErrNotFound):
			statuses[i] = "expired" // kept no longer (Retention over)
		case err != nil:
			return err
		default:
			statuses[i] = st.Status
		}
		return nil
	})
	if err != nil {
		a.unavailable(w, err)
		return
	}
	out := BatchStatus{BatchID: id, Total: len(ids), Page: page, PageSize: size, Emails: []BatchEmail{},
		Counts: map[string]int{queue.StatusQueued: 0, queue.StatusScheduled: 0, queue.StatusSending: 0,
			queue.StatusRetrying: 0, queue.StatusSent: 0, queue.StatusFailed: 0, queue.StatusCanceled: 0}}
	for i, s := range statuses {
		if _, known := out.Counts[s]; known {
			out.Counts[s]++
		}
		if i >= (page-1)*size && len(out.Emails) < size {
			out.Emails = append(out.Emails, BatchEmail{ID: ids[i], Status: s})
		}
	}
	WriteJSON(w, http.StatusOK, out)
}

func (a *API) cancelBatch(w http.ResponseWriter, r *http.Request, key *APIKey) {
	ctx, cancel := context.WithTimeout(r.Context(), a.cfg.RedisTimeout)
	defer cancel()
	_, ids, ok := a.batchIDs(ctx, w, r, key)
	if !ok {
		return
	}
	ctx, cancel = a.batchContext(r.Context(), len(ids))
	defer cancel()
	var out BatchCanceled
	var mu sync.Mutex
	err := each(ids, func(_ int, id string) error {
		var err error
		if a.cfg.Events == nil {
			err = a.admin.Cancel(ctx, id)
		} else {
			hook, handOff := a.cfg.Events.Cancel(ctx, a.store)
			if err = a.admin.Cancel(ctx, id, hook); err == nil {
				if herr := handOff(context.WithoutCancel(ctx)); herr != nil {
					a.log.Warn("email.canceled events stored; their hand-off is left to the sweeper", "email_id", id, "err", herr)
				}
			}
		}
		var ws *queue.ErrWrongState
		mu.Lock()
		defer mu.Unlock()
		switch {
		case err == nil:
			out.Canceled++
			a.m.EmailsFailed.WithLabelValues(queue.ReasonCanceled).Inc()
		case errors.As(err, &ws), errors.Is(err, queue.ErrNotFound):
			out.NotCanceled++
		default:
			return err
		}
		return nil
	})
	if err != nil {
		a.unavailable(w, err)
		return
	}
	WriteJSON(w, http.StatusOK, out)
}
