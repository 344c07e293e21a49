package queue_test

import (
	"context"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/queue"
)

// An email archived from outside sendq (asynq's CLI runs
// Inspector.ArchiveTask) before any attempt is failed with reason archived:
// not transient, which would claim attempts that never ran.
func TestStatusOfATaskArchivedFromOutside(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	client := asynq.NewClientFromRedisClient(rdb)
	insp := asynq.NewInspectorFromRedisClient(rdb)
	look := &queue.Lookup{Inspector: insp, Store: queue.NewStore(rdb, time.Hour)}
	for _, tt := range []struct {
		name     string
		maxRetry int
	}{{"with attempts left", 19}, {"with no retry allowed", 0}} {
		t.Run(tt.name, func(t *testing.T) {
			e := benchEmail()
			e.ID = "archived-" + tt.name
			task, err := queue.NewTask(e)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := client.Enqueue(task, asynq.MaxRetry(tt.maxRetry), asynq.ProcessIn(time.Hour)); err != nil {
				t.Fatal(err)
			}
			if err := insp.ArchiveTask(queue.Name, e.ID); err != nil {
				t.Fatalf("ArchiveTask: %v", err)
			}
			st, err := look.Status(context.Background(), e.ID)
			if err != nil {
				t.Fatal(err)
			}
			if st.Status != queue.StatusFailed || st.FailureReason != queue.ReasonArchived || st.Attempts != 0 {
				t.Errorf("status %s, failure_reason %q, attempts %d; want failed, archived, 0", st.Status, st.FailureReason, st.Attempts)
			}
		})
	}
}

// Compose's reason for an archived task that sendq's worker did not fail.
func TestComposeArchivedReason(t *testing.T) {
	e := benchEmail()
	task, err := queue.NewTask(e)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name             string
		retried, maxRetr int
		lastErr          string
		rec              *queue.Record
		want             string
	}{
		{"archived before any attempt", 0, 19, "", nil, queue.ReasonArchived},
		{"archived before any attempt, no retries", 0, 0, "", nil, queue.ReasonArchived},
		{"archived while retrying", 2, 19, "451 4.3.0 later", &queue.Record{Attempts: 3, State: queue.StatusRetrying}, queue.ReasonArchived},
		{"leases lost until no attempt was left", 19, 19, "asynq: task lease expired", nil, queue.ReasonTransient},
		{"failed by the worker", 0, 19, "550 5.1.1 no", &queue.Record{Attempts: 1, State: queue.StatusFailed, Reason: queue.ReasonPermanent}, queue.ReasonPermanent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			info := &asynq.TaskInfo{ID: e.ID, Queue: queue.Name, Type: task.Type(), Payload: task.Payload(),
				State: asynq.TaskStateArchived, Retried: tt.retried, MaxRetry: tt.maxRetr, LastErr: tt.lastErr}
			rec := tt.rec
			if rec != nil {
				rec.CreatedAt = e.CreatedAt
			}
			st, err := queue.Compose(e.ID, info, rec)
			if err != nil {
				t.Fatal(err)
			}
			if st.Status != queue.StatusFailed || st.FailureReason != tt.want {
				t.Errorf("Compose = %s, %q; want failed, %q", st.Status, st.FailureReason, tt.want)
			}
		})
	}
}
