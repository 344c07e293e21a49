package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"text/tabwriter"
	"time"

	"github.com/hibiken/asynq"

	"github.com/sendq/sendq/events"
	"github.com/sendq/sendq/internal/config"
	"github.com/sendq/sendq/queue"
)

// operate runs the operator commands (status, queues, retry, cancel) against
// the Redis in REDIS_URL: the same data the API reads.
func operate(name string, ids []string, cfg *config.Config, stdout, stderr io.Writer) int {
	if cfg.RedisURL == "" {
		fmt.Fprintf(stderr, "sendq %s: set REDIS_URL (the embedded Redis lives only inside a running sendq serve)\n", name)
		return 2
	}
	if name != "queues" && len(ids) != 1 {
		fmt.Fprintf(stderr, "usage: sendq %s [flags] ID\n", name)
		return 2
	}
	rdb, err := queue.NewRedisClient(cfg.RedisURL)
	if err != nil {
		fmt.Fprintf(stderr, "sendq %s: %v\n", name, err)
		return 2
	}
	defer rdb.Close()
	insp := asynq.NewInspectorFromRedisClient(rdb)
	store := queue.NewStore(rdb, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	fail := func(err error) int {
		if errors.Is(err, queue.ErrNotFound) {
			fmt.Fprintf(stderr, "sendq %s: no email %s\n", name, ids[0])
			return 1
		}
		fmt.Fprintf(stderr, "sendq %s: %v\n", name, err)
		return 1
	}
	topo := cfg.Topology()
	enq := asynq.NewClientFromRedisClient(rdb)
	admin := &queue.Admin{Inspector: insp, Store: store, Topology: topo, Enqueuer: enq}
	switch name {
	case "queues":
		// One line per priority, its shards summed.
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "QUEUE\tPRIORITY\tSHARDS\tPENDING\tACTIVE\tSCHEDULED\tRETRY\tFAILED\tSENT(RETAINED)\tOLDEST PENDING\tPAUSED")
		for _, p := range queue.Priorities {
			infos, err := topo.QueueInfos(insp, topo.Queues(p))
			if err != nil {
				return fail(err)
			}
			qi := queue.SumQueueInfo(queue.BaseName(p), infos)
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%v\n", qi.Queue, p, len(infos), qi.Pending, qi.Active, qi.Scheduled,
				qi.Retry, qi.Archived, qi.Completed, qi.Latency.Round(time.Millisecond), qi.Paused)
		}
		_ = tw.Flush()
		return 0
	case "retry":
		if err := admin.Retry(ctx, ids[0]); err != nil {
			return fail(err)
		}
	case "cancel":
		// As DELETE /v1/emails/{id}: the email.canceled events are
		// written with the canceled record (a sendq worker's sweeper
		// hands them off if this command cannot).
		client := asynq.NewClientFromRedisClient(rdb)
		defer client.Close()
		evlog, err := events.NewLog(rdb, client, events.LogConfig{Endpoints: cfg.WebhookEndpoints,
			Retention: cfg.Retention, TTL: cfg.RecordTTL(), Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			return fail(err)
		}
		hook, handOff := evlog.Cancel(ctx, store)
		if err := admin.Cancel(ctx, ids[0], hook); err != nil {
			return fail(err)
		}
		_ = handOff(ctx)
	}
	st, err := (&queue.Lookup{Inspector: insp, Store: store, Topology: topo}).Status(ctx, ids[0])
	if err != nil {
		return fail(err)
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	_ = enc.Encode(st)
	return 0
}
