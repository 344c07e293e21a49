package client_test

import (
	"errors"
	"net/http"
	"strings"
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

// A templated batch through the client: the defaults' TemplateData and
// each message's merged, the email delivered rendered; a missing
// variable named in the message's result.
func TestSendTemplatedBatch(t *testing.T) {
	t.Parallel()
	s := newServer(t, nil)
	c := newClient(t, s.URL, client.WithPollInterval(20*time.Millisecond, 200*time.Millisecond))
	ctx := ctxFor(t, 30*time.Second)
	v, err := c.PutTemplate(ctx, "order-shipped", client.Template{Subject: "Order {{.OrderNo}} for {{.FirstName}}", Text: "Track it: {{.Link}}"})
	if err != nil || v.Version != 1 {
		t.Fatalf("PutTemplate = %+v, %v", v, err)
	}
	_, err = c.PutTemplate(ctx, "broken", client.Template{Subject: "{{.A", Text: "t"})
	var ae *client.APIError
	if !errors.As(err, &ae) || ae.Code != "invalid_template" || ae.Field != "Subject" {
		t.Errorf("PutTemplate(broken) = %v; want invalid_template on Subject", err)
	}
	res, err := c.SendBatch(ctx, client.Batch{
		Defaults: client.Email{From: "shop@example.com", Template: "order-shipped", TemplateData: map[string]any{"Link": "https://example.com/t"}},
		Messages: []client.BatchMessage{
			{Email: client.Email{To: "ada@example.org", TemplateData: map[string]any{"FirstName": "Ada", "OrderNo": 1042}}},
			{Email: client.Email{To: "bob@example.org", TemplateData: map[string]any{"FirstName": "Bob"}}},
		},
	})
	if err != nil || res.Accepted != 1 {
		t.Fatalf("SendBatch = %+v, %v; want 1 accepted", res, err)
	}
	if e := res.Results[1].Error; e == nil || e.Code != "missing_variable" || e.Field != "Messages[1].TemplateData.OrderNo" {
		t.Errorf("result 1 = %+v; want missing_variable on Messages[1].TemplateData.OrderNo", res.Results[1])
	}
	if st, err := c.Wait(ctx, res.Results[0].ID); err != nil || st.Status != client.StateSent {
		t.Fatalf("Wait = %+v, %v", st, err)
	}
	msgs := s.Sink.Messages()
	if len(msgs) != 1 {
		t.Fatalf("delivered %d messages; want 1", len(msgs))
	}
	if data := string(msgs[0].Data); !strings.Contains(data, "Subject: Order 1042 for Ada\r\n") || !strings.Contains(data, "Track it: https://example.com/t") {
		t.Errorf("delivered %q; want the rendered subject and text", data)
	}
}
