package events_test

import (
	"testing"
	"time"

	"github.com/sendq/sendq/events"
	"github.com/sendq/sendq/queue"
)

// An event of an email that came in a batch names the batch; one of a
// single send names none.
func TestEventsCarryTheBatch(t *testing.T) {
	for _, batch := range []string{"", "bat_01"} {
		e := &queue.Email{ID: "e1", BatchID: batch, To: []queue.Address{{Address: "a@example.com"}}}
		if d := events.About(e, "a@example.com", "sent", 1, queue.Reply{Code: 250}); d.BatchID != batch {
			t.Errorf("About(batch %q).BatchID = %q; want %q", batch, d.BatchID, batch)
		}
		for _, ev := range events.Canceled(e, nil, time.Now()) {
			if ev.Data.BatchID != batch {
				t.Errorf("Canceled(batch %q) event BatchID = %q; want %q", batch, ev.Data.BatchID, batch)
			}
		}
	}
}
