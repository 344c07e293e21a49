package producer_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/sendq/sendq/producer"
	"github.com/sendq/sendq/queue"
)

// The keys of the issue (with secrets long enough to be accepted), a key of
// alpha's tenant and an admin key.
const (
	isoKeys  = "k-alpha-0001:@contoso.example,k-beta-0002,acme=k-acme-0003,acme=k-acme-0004"
	isoAdmin = "k-admin-0005"
)

func bearer(k string) map[string]string { return map[string]string{"Authorization": "Bearer " + k} }

var (
	alpha = bearer("k-alpha-0001")
	beta  = bearer("k-beta-0002")
	acme1 = bearer("k-acme-0003")
	acme2 = bearer("k-acme-0004")
	admin = bearer(isoAdmin)
)

const isoBody = `{"From":"sales@contoso.example","To":"a@contoso.example","Bcc":"secret-audit@contoso.example","Subject":"Q3 numbers"}`

func setupIsolated(t *testing.T) *apiBundle {
	return setupAPI(t, func(c *producer.Config) {
		c.Keys = mustKeys(t, isoKeys)
		c.AdminKeys = mustKeys(t, isoAdmin)
	})
}

func (b *apiBundle) send(t *testing.T, header map[string]string) string {
	t.Helper()
	r := b.do(t, "POST", "/v1/emails", isoBody, header)
	if r.code != 202 {
		t.Fatalf("POST = %d %s; want 202", r.code, r.raw)
	}
	return r.body["id"].(string)
}

// notFound fails t unless r is the 404 an unknown id gets, so that another
// key cannot tell that the id exists.
func notFound(t *testing.T, what string, r response) {
	t.Helper()
	if code, field := errField(r); r.code != 404 || code != "not_found" || field != "id" {
		t.Errorf("%s = %d %s; want 404 not_found (as for an unknown id)", what, r.code, r.raw)
	}
}

func TestAnotherKeyCannotSeeAnEmail(t *testing.T) {
	t.Parallel()
	b := setupIsolated(t)
	id := b.send(t, alpha)
	for _, h := range []map[string]string{beta, acme1} {
		notFound(t, fmt.Sprintf("GET with %s", h["Authorization"]), b.do(t, "GET", "/v1/emails/"+id, "", h))
	}
	for name, h := range map[string]map[string]string{"alpha": alpha, "admin": admin} {
		if r := b.do(t, "GET", "/v1/emails/"+id, "", h); r.code != 200 || r.body["subject"] != "Q3 numbers" {
			t.Errorf("GET with %s = %d %s; want 200 with the email", name, r.code, r.raw)
		}
	}
}

func TestAnotherKeyCannotCancelAnEmail(t *testing.T) {
	t.Parallel()
	b := setupIsolated(t)
	id := b.send(t, alpha)
	notFound(t, "DELETE with beta", b.do(t, "DELETE", "/v1/emails/"+id, "", beta))
	if info, err := b.insp.GetTaskInfo(queue.Name, id); err != nil || queue.StateName(info.State) != queue.StatusQueued {
		t.Fatalf("after beta's DELETE the email is %v (%v); want still queued", info, err)
	}
	if r := b.do(t, "DELETE", "/v1/emails/"+id, "", alpha); r.code != 200 || r.body["status"] != "canceled" {
		t.Errorf("DELETE with alpha = %d %s; want 200 canceled", r.code, r.raw)
	}
	// An admin key cancels anyone's.
	other := b.send(t, beta)
	if r := b.do(t, "DELETE", "/v1/emails/"+other, "", admin); r.code != 200 || r.body["status"] != "canceled" {
		t.Errorf("DELETE of beta's with the admin key = %d %s; want 200 canceled", r.code, r.raw)
	}
	// The cancel wrote the owner into the record, which answers for the
	// email once asynq has forgotten it.
	rec, err := b.store.Get(context.Background(), id)
	if err != nil || rec.Owner == "" || rec.Owner != mustKeys(t, "k-alpha-0001")[0].Owner() {
		t.Errorf("record after cancel = %+v, %v; want alpha's owner", rec, err)
	}
}

func TestAnotherKeyCannotRetryAnEmail(t *testing.T) {
	t.Parallel()
	b := setupIsolated(t)
	id := b.send(t, alpha)
	if r := b.do(t, "DELETE", "/v1/emails/"+id, "", alpha); r.code != 200 {
		t.Fatalf("DELETE = %d %s", r.code, r.raw)
	}
	notFound(t, "retry with beta", b.do(t, "POST", "/v1/emails/"+id+"/retry", "", beta))
	if info, err := b.insp.GetTaskInfo(queue.Name, id); err != nil || queue.StateName(info.State) != queue.StatusFailed {
		t.Fatalf("after beta's retry the email is %v (%v); want still canceled (archived)", info, err)
	}
	if r := b.do(t, "POST", "/v1/emails/"+id+"/retry", "", admin); r.code != 200 || r.body["status"] != "queued" {
		t.Errorf("retry with the admin key = %d %s; want 200 queued", r.code, r.raw)
	}
}

func TestListShowsOnlyTheKeysOwnEmails(t *testing.T) {
	t.Parallel()
	b := setupIsolated(t)
	var mine []string
	for i := 0; i < 3; i++ {
		mine = append(mine, b.send(t, alpha))
		b.send(t, beta)
		b.send(t, beta)
	}
	list := func(h map[string]string, query string) (ids []string, total float64, r response) {
		t.Helper()
		r = b.do(t, "GET", "/v1/emails?status=queued"+query, "", h)
		if r.code != 200 {
			t.Fatalf("GET list = %d %s", r.code, r.raw)
		}
		for _, e := range r.body["emails"].([]any) {
			ids = append(ids, e.(map[string]any)["id"].(string))
		}
		return ids, r.body["total"].(float64), r
	}
	ids, total, r := list(alpha, "")
	if len(ids) != 3 || total != 3 || r.body["truncated"] != nil {
		t.Fatalf("alpha's list = %s; want its 3 emails, total 3", r.raw)
	}
	for i, id := range mine {
		if ids[i] != id {
			t.Errorf("alpha's list [%d] = %s; want %s (the queue's order)", i, ids[i], id)
		}
	}
	// Pages count the key's emails only.
	if ids, total, r := list(alpha, "&page=2&page_size=2"); len(ids) != 1 || ids[0] != mine[2] || total != 3 {
		t.Errorf("alpha's page 2 of size 2 = %s; want its third email, total 3", r.raw)
	}
	if ids, total, r := list(beta, ""); len(ids) != 6 || total != 6 {
		t.Errorf("beta's list = %s; want its 6 emails", r.raw)
	}
	if ids, total, r := list(acme1, ""); len(ids) != 0 || total != 0 {
		t.Errorf("acme's list = %s; want none", r.raw)
	}
	if ids, total, r := list(admin, ""); len(ids) != 9 || total != 9 {
		t.Errorf("the admin key's list = %s; want all 9", r.raw)
	}
}

// Keys of one tenant share their emails (a key being rotated, and its
// successor); the key's allow-list and its idempotency keys stay its own.
func TestKeysOfOneTenantShareEmails(t *testing.T) {
	t.Parallel()
	b := setupIsolated(t)
	id := b.send(t, acme1)
	if r := b.do(t, "GET", "/v1/emails/"+id, "", acme2); r.code != 200 {
		t.Errorf("GET with the tenant's other key = %d %s; want 200", r.code, r.raw)
	}
	notFound(t, "GET with alpha", b.do(t, "GET", "/v1/emails/"+id, "", alpha))
	if r := b.do(t, "DELETE", "/v1/emails/"+id, "", acme2); r.code != 200 {
		t.Errorf("DELETE with the tenant's other key = %d %s; want 200", r.code, r.raw)
	}
	if r := b.do(t, "POST", "/v1/emails/"+id+"/retry", "", acme2); r.code != 200 {
		t.Errorf("retry with the tenant's other key = %d %s; want 200", r.code, r.raw)
	}
}

// Idempotency keys are per API key, also within a tenant: the same
// Idempotency-Key from two keys makes two emails, each its key's own.
func TestIdempotencyKeysStayPerKey(t *testing.T) {
	t.Parallel()
	b := setupIsolated(t)
	ids := map[string]string{}
	for name, h := range map[string]map[string]string{"alpha": alpha, "beta": beta, "acme1": acme1, "acme2": acme2} {
		hh := map[string]string{"Idempotency-Key": "order-42"}
		for k, v := range h {
			hh[k] = v
		}
		r := b.do(t, "POST", "/v1/emails", isoBody, hh)
		if r.code != 202 {
			t.Fatalf("POST with %s = %d %s", name, r.code, r.raw)
		}
		ids[name] = r.body["id"].(string)
	}
	if len(map[string]bool{ids["alpha"]: true, ids["beta"]: true, ids["acme1"]: true, ids["acme2"]: true}) != 4 {
		t.Errorf("ids %v; want one email per key", ids)
	}
	notFound(t, "beta's GET of alpha's idempotent email", b.do(t, "GET", "/v1/emails/"+ids["alpha"], "", beta))
}

// Without keys there is no one to keep apart: every caller sees every
// email, as before.
func TestWithoutKeysEveryCallerSeesEverything(t *testing.T) {
	t.Parallel()
	b := setupAPI(t, func(c *producer.Config) { c.AdminKeys = mustKeys(t, isoAdmin) })
	id := b.send(t, nil)
	if r := b.do(t, "GET", "/v1/emails/"+id, "", nil); r.code != 200 {
		t.Errorf("GET = %d %s; want 200", r.code, r.raw)
	}
	if r := b.do(t, "GET", "/v1/emails?status=queued", "", nil); r.code != 200 || r.body["total"] != float64(1) {
		t.Errorf("list = %d %s; want the email", r.code, r.raw)
	}
	info, err := b.insp.GetTaskInfo(queue.Name, id)
	if err != nil {
		t.Fatal(err)
	}
	if e, err := queue.DecodeEmail(info.Payload); err != nil || e.Owner != "" {
		t.Errorf("owner without keys = %q (%v); want none", e.Owner, err)
	}
}

// The payload names the owner by the key's id, never the key.
func TestOwnerIsNotTheSecret(t *testing.T) {
	t.Parallel()
	b := setupIsolated(t)
	for _, tt := range []struct {
		header       map[string]string
		secret, want string
	}{
		{alpha, "k-alpha-0001", "key:" + mustKeys(t, "k-alpha-0001")[0].ID},
		{acme1, "k-acme-0003", "tenant:acme"},
	} {
		id := b.send(t, tt.header)
		info, err := b.insp.GetTaskInfo(queue.Name, id)
		if err != nil {
			t.Fatal(err)
		}
		e, err := queue.DecodeEmail(info.Payload)
		if err != nil || e.Owner != tt.want {
			t.Errorf("owner = %q (%v); want %q", e.Owner, err, tt.want)
		}
		if s := string(info.Payload); len(s) == 0 || strings.Contains(s, tt.secret) {
			t.Errorf("the payload holds the key %q", tt.secret)
		}
	}
	if r := b.do(t, "GET", "/v1/emails?status=queued", "", alpha); strings.Contains(string(r.raw), "owner") {
		t.Errorf("the list shows the owner: %s", r.raw)
	}
}

// A key's listing reads at most ListScanLimit emails of the state and says
// so when it stopped before the end.
func TestListOfOwnEmailsIsBounded(t *testing.T) {
	t.Parallel()
	b := setupAPI(t, func(c *producer.Config) {
		c.Keys = mustKeys(t, isoKeys)
		c.ListScanLimit = 4
	})
	first := b.send(t, alpha)
	for i := 0; i < 4; i++ {
		b.send(t, beta)
	}
	late := b.send(t, alpha) // sixth in the queue: past the 4 read
	r := b.do(t, "GET", "/v1/emails?status=queued", "", alpha)
	emails, _ := r.body["emails"].([]any)
	if r.code != 200 || len(emails) != 1 || r.body["total"] != float64(1) || r.body["truncated"] != true ||
		emails[0].(map[string]any)["id"] != first {
		t.Errorf("alpha's list = %d %s; want %s only, total 1, truncated", r.code, r.raw, first)
	}
	if r := b.do(t, "GET", "/v1/emails/"+late, "", alpha); r.code != 200 {
		t.Errorf("GET of the email past the scan = %d; want 200 (only the list is bounded)", r.code)
	}
}

// Once asynq has forgotten an email, its status comes from sendq's record,
// which carries the owner too.
func TestAForgottenEmailStaysPrivate(t *testing.T) {
	t.Parallel()
	b := setupIsolated(t)
	id := b.send(t, alpha)
	if r := b.do(t, "DELETE", "/v1/emails/"+id, "", alpha); r.code != 200 {
		t.Fatalf("DELETE = %d %s", r.code, r.raw)
	}
	if err := b.insp.DeleteTask(queue.Name, id); err != nil {
		t.Fatal(err)
	}
	notFound(t, "beta's GET of a forgotten email", b.do(t, "GET", "/v1/emails/"+id, "", beta))
	if r := b.do(t, "GET", "/v1/emails/"+id, "", alpha); r.code != 200 || r.body["status"] != "canceled" {
		t.Errorf("alpha's GET of its forgotten email = %d %s; want 200 canceled", r.code, r.raw)
	}
	if r := b.do(t, "GET", "/v1/emails/"+id, "", admin); r.code != 200 {
		t.Errorf("the admin's GET of a forgotten email = %d %s; want 200", r.code, r.raw)
	}
}
