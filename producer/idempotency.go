package producer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// IdempotencyTTL is how long an Idempotency-Key is remembered.
const IdempotencyTTL = 24 * time.Hour

// idemRecord is what Redis keeps for one Idempotency-Key.
type idemRecord struct {
	BodyHash string `json:"h"`
	ID       string `json:"id"`
	Status   string `json:"status"`
	Done     bool   `json:"done"`
}

type idempotency struct{ rdb redis.UniversalClient }

func idemKey(keyID, key string) string {
	d := sha256.Sum256([]byte(keyID + "\x00" + key))
	return "sendq:idem:{" + hex.EncodeToString(d[:16]) + "}"
}

var (
	errIdemMismatch   = errors.New("idempotency key reused with a different body")
	errIdemInProgress = errors.New("a request with this idempotency key is in progress")
)

// claim reserves key for a new email id. If the key is already known it
// returns the first request's record instead (done), errIdemMismatch for
// another body, or errIdemInProgress while the first request is running.
func (i *idempotency) claim(ctx context.Context, keyID, key string, body []byte, id, status string) (*idemRecord, bool, error) {
	h := sha256.Sum256(body)
	rec := idemRecord{BodyHash: hex.EncodeToString(h[:]), ID: id, Status: status}
	b, _ := json.Marshal(rec)
	rk := idemKey(keyID, key)
	ok, err := i.rdb.SetNX(ctx, rk, b, IdempotencyTTL).Result()
	if err != nil {
		return nil, false, fmt.Errorf("idempotency claim: %w", err)
	}
	if ok {
		return &rec, true, nil
	}
	v, err := i.rdb.Get(ctx, rk).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, false, errIdemInProgress // expired between the two calls
	}
	if err != nil {
		return nil, false, fmt.Errorf("idempotency read: %w", err)
	}
	var prev idemRecord
	if err := json.Unmarshal(v, &prev); err != nil {
		return nil, false, fmt.Errorf("idempotency record: %w", err)
	}
	if prev.BodyHash != rec.BodyHash {
		return nil, false, errIdemMismatch
	}
	if !prev.Done {
		return nil, false, errIdemInProgress
	}
	return &prev, false, nil
}

// complete marks the claim as answered, keeping its expiry.
func (i *idempotency) complete(ctx context.Context, keyID, key string, rec *idemRecord) error {
	rec.Done = true
	b, _ := json.Marshal(rec)
	return i.rdb.SetArgs(ctx, idemKey(keyID, key), b, redis.SetArgs{KeepTTL: true, Mode: "XX"}).Err()
}

// release forgets a claim whose request failed, so the caller can retry.
func (i *idempotency) release(ctx context.Context, keyID, key string) {
	_ = i.rdb.Del(ctx, idemKey(keyID, key)).Err()
}
