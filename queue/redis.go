package queue

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis timeouts. They are short on purpose: the intake must answer 503
// within a few seconds when Redis is gone, not hang on a dead socket.
const (
	redisDialTimeout  = 2 * time.Second
	redisReadTimeout  = 3 * time.Second
	redisWriteTimeout = 3 * time.Second
	redisMaxRetries   = 1
)

// NewRedisClient returns a client for a Redis URL of one of these forms:
//
//	redis://[user:pass@]host:port[/db]             one server
//	rediss://[user:pass@]host:port[/db]            one server over TLS
//	redis-sentinel://[:pass@]h1:26379,h2:26379[/db]?master=NAME
//	redis-cluster://[user:pass@]h1:7000,h2:7001,...
//
// The same client serves asynq and sendq's own keys, so both live in the
// same topology. The password never appears in a returned error.
func NewRedisClient(rawURL string) (redis.UniversalClient, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("parse REDIS_URL: %w", redactURLError(err))
	}
	switch u.Scheme {
	case "redis", "rediss":
		opt, err := redis.ParseURL(rawURL)
		if err != nil {
			return nil, fmt.Errorf("parse REDIS_URL: %w", redactURLError(err))
		}
		opt.DialTimeout, opt.ReadTimeout, opt.WriteTimeout = redisDialTimeout, redisReadTimeout, redisWriteTimeout
		opt.MaxRetries = redisMaxRetries
		return redis.NewClient(opt), nil
	case "redis-sentinel":
		q := u.Query()
		master := q.Get("master")
		if master == "" {
			return nil, errors.New("parse REDIS_URL: redis-sentinel needs ?master=NAME")
		}
		db, err := pathDB(u.Path)
		if err != nil {
			return nil, err
		}
		pass, _ := u.User.Password()
		return redis.NewFailoverClient(&redis.FailoverOptions{
			MasterName:       master,
			SentinelAddrs:    strings.Split(u.Host, ","),
			Password:         pass,
			SentinelPassword: q.Get("sentinel_password"),
			DB:               db,
			DialTimeout:      redisDialTimeout,
			ReadTimeout:      redisReadTimeout,
			WriteTimeout:     redisWriteTimeout,
			MaxRetries:       redisMaxRetries,
			TLSConfig:        tlsFor(q),
		}), nil
	case "redis-cluster":
		pass, _ := u.User.Password()
		return redis.NewClusterClient(&redis.ClusterOptions{
			Addrs:        strings.Split(u.Host, ","),
			Username:     u.User.Username(),
			Password:     pass,
			DialTimeout:  redisDialTimeout,
			ReadTimeout:  redisReadTimeout,
			WriteTimeout: redisWriteTimeout,
			MaxRedirects: 3,
			TLSConfig:    tlsFor(u.Query()),
		}), nil
	default:
		return nil, fmt.Errorf("parse REDIS_URL: unsupported scheme %q (want redis, rediss, redis-sentinel or redis-cluster)", u.Scheme)
	}
}

func pathDB(p string) (int, error) {
	p = strings.Trim(p, "/")
	if p == "" {
		return 0, nil
	}
	db, err := strconv.Atoi(p)
	if err != nil || db < 0 {
		return 0, fmt.Errorf("parse REDIS_URL: database %q is not a number", p)
	}
	return db, nil
}

func tlsFor(q url.Values) *tls.Config {
	if q.Get("tls") != "true" {
		return nil
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: q.Get("tls_skip_verify") == "true"} //nolint:gosec // only on explicit request
}

// redactURLError drops the URL from a *url.Error, which would otherwise
// carry the password into a log line.
func redactURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
