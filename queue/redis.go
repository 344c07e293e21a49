package queue

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"sync"
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

// ScriptsPipelined returns rdb with one change: its EvalSha, the command
// asynq runs its Lua scripts with (the enqueue among them), goes through
// ap, a pipeliner NewPipeliner returned on rdb. The scripts of concurrent
// callers then share pipelines: one write and one read per batch instead of
// per call, which is what Redis spends most of an enqueue on. Every other
// command runs on rdb as before.
//
// Unlike the pipeliner's own blocking face, a call ends when its context
// does: a frozen Redis costs the caller its deadline, not the read timeout
// and retries. And a call whose context ended while it waited behind a
// stalled batch is dropped before it is written, so an intake that answered
// 503 does not queue the email later anyway; only a call already written
// when Redis stalled may still run when it wakes, as on rdb.
func ScriptsPipelined(rdb redis.UniversalClient, ap *redis.AutoPipeliner) redis.UniversalClient {
	c := &scriptsPipelined{UniversalClient: rdb, ap: ap}
	rdb.AddHook(dropExpired{c})
	return c
}

type scriptsPipelined struct {
	redis.UniversalClient
	ap *redis.AutoPipeliner
	// waiting holds the context of each submitted command until its batch
	// is about to be written (*redis.Cmd -> context.Context).
	waiting sync.Map
}

func (c *scriptsPipelined) EvalSha(ctx context.Context, sha1 string, keys []string, args ...any) *redis.Cmd {
	cmdArgs := make([]any, 0, 3+len(keys)+len(args))
	cmdArgs = append(cmdArgs, "evalsha", sha1, len(keys))
	for _, k := range keys {
		cmdArgs = append(cmdArgs, k)
	}
	cmdArgs = append(cmdArgs, args...)
	// The submitted command belongs to the pipeliner until its batch has
	// run; the caller gets its own copy of the outcome.
	sent := redis.NewCmd(ctx, cmdArgs...)
	out := redis.NewCmd(ctx, cmdArgs...)
	c.waiting.Store(sent, ctx)
	f := c.ap.Submit(ctx, sent)
	if err := f.WaitContext(ctx); err != nil && ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		out.SetErr(err) // dropExpired forgets sent when its batch goes out
		return out
	}
	c.waiting.Delete(sent) // in case it never reached a batch (refused)
	out.SetVal(sent.Val())
	out.SetErr(sent.Err())
	return out
}

// dropExpired is a pipeline hook on rdb: it takes out of a batch about to
// be written the scripts whose caller has given up.
type dropExpired struct{ c *scriptsPipelined }

func (dropExpired) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (dropExpired) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }

func (h dropExpired) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		var keep []redis.Cmder
		for i, cmd := range cmds {
			v, ok := h.c.waiting.LoadAndDelete(cmd)
			if !ok {
				if keep != nil {
					keep = append(keep, cmd)
				}
				continue
			}
			if err := v.(context.Context).Err(); err != nil {
				cmd.SetErr(err)
				if keep == nil {
					keep = append(make([]redis.Cmder, 0, len(cmds)), cmds[:i]...)
				}
				continue
			}
			if keep != nil {
				keep = append(keep, cmd)
			}
		}
		switch {
		case keep == nil:
			return next(ctx, cmds)
		case len(keep) == 0:
			return nil
		}
		return next(ctx, keep)
	}
}

// NewPipeliner returns the deferred face of an automatic pipeliner on rdb,
// with go-redis's defaults (one ordered stream, one batch in flight, up to
// 200 commands a batch: callers that arrive while a batch is out form the
// next) and a bound on waiting commands: when Redis stalls, the command
// past the bound fails at once (the intake answers 503) instead of growing
// memory. Close it before rdb.
func NewPipeliner(rdb redis.UniversalClient) (*redis.AutoPipeliner, error) {
	o := redis.DefaultAutoPipelineOptions()
	o.MaxQueuedCommands = 10000
	ap, err := rdb.AsyncAutoPipelineWithOptions(o)
	if err != nil {
		return nil, fmt.Errorf("redis autopipeline: %w", err)
	}
	return ap, nil
}
