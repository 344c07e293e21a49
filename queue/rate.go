package queue

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/go-redis/redis_rate/v10"
)

// ParseRate parses a rate such as "100/s", "6000/m" or "50000/h" into a
// GCRA limit whose burst equals the rate per period. An empty string is no
// limit (the zero Limit).
func ParseRate(s string) (redis_rate.Limit, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return redis_rate.Limit{}, nil
	}
	n, unit, ok := strings.Cut(s, "/")
	rate, err := strconv.Atoi(strings.TrimSpace(n))
	if !ok || err != nil || rate <= 0 {
		return redis_rate.Limit{}, fmt.Errorf("rate %q must look like 100/s, 6000/m or 50000/h", s)
	}
	var period time.Duration
	switch strings.TrimSpace(unit) {
	case "s", "sec", "second":
		period = time.Second
	case "m", "min", "minute":
		period = time.Minute
	case "h", "hour":
		period = time.Hour
	default:
		return redis_rate.Limit{}, fmt.Errorf("rate %q: the unit must be s, m or h", s)
	}
	return redis_rate.Limit{Rate: rate, Burst: rate, Period: period}, nil
}

// Rate-limit keys. The part in braces is a Redis Cluster hash tag.
func IntakeRateKey(keyID string) string { return "sendq:rate:intake:{" + keyID + "}" }

// RelayRateKey is the key of the delivery limit of one relay, shared by
// every worker process.
func RelayRateKey(relay string) string { return "sendq:rate:relay:{" + relay + "}" }
