package client_test

import (
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/sendq/sendq/client"
)

// SendBatch against a real sendq: the valid messages are queued and
// delivered, the invalid one is named; a retry with the same key returns
// the same answer; a strict batch with an invalid message queues nothing
// and says why.
func TestSendBatch(t *testing.T) {
	t.Parallel()
	s := newServer(t, nil)
	c := newClient(t, s.URL, client.WithPollInterval(20*time.Millisecond, 200*time.Millisecond))
	ctx := ctxFor(t, 30*time.Second)

	b := client.Batch{
		Defaults: client.Email{From: "Shop <shop@example.com>", Subject: "Your order shipped", Body: "<p>On its way.</p>"},
		Messages: []client.BatchMessage{
			{Email: client.Email{To: "ada@example.org"}, IdempotencyKey: "ship/A-1"},
			{Email: client.Email{To: "bob@example.org", Subject: "Override"}},
			{Email: client.Email{To: "not an address"}},
		},
	}
	res, err := c.SendBatch(ctx, b, client.IdempotencyKey("batch-1"))
	if err != nil {
		t.Fatalf("SendBatch = %v", err)
	}
	if res.BatchID == "" || res.Accepted != 2 || res.Rejected != 1 || len(res.Results) != 3 {
		t.Fatalf("SendBatch = %+v; want 2 accepted, 1 rejected, 3 results", res)
	}
	if e := res.Results[2].Error; e == nil || e.Field != "Messages[2].To" {
		t.Errorf("result 2 = %+v; want an error naming Messages[2].To", res.Results[2])
	}
	for _, r := range res.Results[:2] {
		st, err := c.Wait(ctx, r.ID)
		if err != nil || st.Status != client.StateSent {
			t.Errorf("Wait(%s) = %+v, %v; want sent", r.ID, st, err)
		}
	}
	again, err := c.SendBatch(ctx, b, client.IdempotencyKey("batch-1"))
	if err != nil || again.BatchID != res.BatchID || again.Results[0].ID != res.Results[0].ID {
		t.Errorf("replay = %+v, %v; want the first answer (batch %s)", again, err, res.BatchID)
	}
	// The message's own key makes a later single send the same email.
	acc, err := c.Send(ctx, client.Email{From: "shop@example.com", To: "ada@example.org", Subject: "Your order shipped", Body: "<p>On its way.</p>"},
		client.IdempotencyKey("ship/A-1"))
	if err != nil || acc.ID != res.Results[0].ID {
		t.Errorf("Send with the message's key = %+v, %v; want the batch email %s", acc, err, res.Results[0].ID)
	}

	b.Validation = client.ValidationStrict
	res, err = c.SendBatch(ctx, b)
	var ae *client.APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusBadRequest || res == nil || res.Accepted != 0 || res.Results[2].Error == nil {
		t.Fatalf("strict SendBatch = %+v, %v; want a 400 APIError and the result naming the invalid message", res, err)
	}
}
