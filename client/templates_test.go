package client_test

import (
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/sendq/sendq/client"
)

// The template calls against a real sendq: versions count from 1,
// version 0 is the current one, an unknown name or version is a 404 and a
// template that does not parse is a 400; a send names the template and is
// rendered with its TemplateData.
func TestTemplates(t *testing.T) {
	t.Parallel()
	s := newServer(t, nil)
	c := newClient(t, s.URL, client.WithPollInterval(20*time.Millisecond, 200*time.Millisecond))
	ctx := ctxFor(t, 30*time.Second)

	v1, err := c.PutTemplate(ctx, "welcome", client.Template{Subject: "Hi {{.Name}}", Text: "Welcome, {{.Name}}."})
	if err != nil || v1.Name != "welcome" || v1.Version != 1 || v1.CreatedAt.IsZero() {
		t.Fatalf("PutTemplate = %+v, %v; want version 1", v1, err)
	}
	if v2, err := c.PutTemplate(ctx, "welcome", client.Template{Subject: "Hello {{.Name}}", Html: "<p>{{.Name}}</p>"}); err != nil || v2.Version != 2 {
		t.Fatalf("PutTemplate again = %+v, %v; want version 2", v2, err)
	}
	if cur, err := c.GetTemplate(ctx, "welcome", 0); err != nil || cur.Version != 2 || cur.Subject != "Hello {{.Name}}" || cur.Html != "<p>{{.Name}}</p>" {
		t.Errorf("GetTemplate(welcome, 0) = %+v, %v; want version 2", cur, err)
	}
	if old, err := c.GetTemplate(ctx, "welcome", 1); err != nil || old.Version != 1 || old.Text != "Welcome, {{.Name}}." {
		t.Errorf("GetTemplate(welcome, 1) = %+v, %v; want version 1", old, err)
	}
	var ae *client.APIError
	for _, tc := range []struct {
		name string
		n    int
	}{{"nope", 0}, {"welcome", 3}} {
		if _, err := c.GetTemplate(ctx, tc.name, tc.n); !errors.As(err, &ae) || ae.Status != http.StatusNotFound {
			t.Errorf("GetTemplate(%s, %d) = %v; want a 404 APIError", tc.name, tc.n, err)
		}
	}
	if _, err := c.PutTemplate(ctx, "broken", client.Template{Subject: "Hi {{.Name", Text: "x"}); !errors.As(err, &ae) || ae.Status != http.StatusBadRequest {
		t.Errorf("PutTemplate(broken) = %v; want a 400 APIError", err)
	}

	acc, err := c.Send(ctx, client.Email{From: "shop@example.com", To: "ada@example.org", Template: "welcome", TemplateVersion: 1,
		TemplateData: map[string]any{"Name": "Ada"}})
	if err != nil {
		t.Fatalf("Send with a template = %v", err)
	}
	if st, err := c.Wait(ctx, acc.ID); err != nil || st.Status != client.StateSent || st.Subject != "Hi Ada" {
		t.Errorf("Wait = %+v, %v; want sent with subject \"Hi Ada\"", st, err)
	}

	// Render, list, delete.
	r, err := c.RenderTemplate(ctx, "welcome", map[string]any{"Name": "Bo <b>"})
	if err != nil || r.Version != 2 || r.Subject != "Hello Bo <b>" || r.Html != "<p>Bo &lt;b&gt;</p>" {
		t.Errorf("RenderTemplate = %+v, %v; want version 2, the subject as given, the HTML escaped", r, err)
	}
	if _, err := c.RenderTemplate(ctx, "welcome", nil); !errors.As(err, &ae) || ae.Code != "missing_variable" || ae.Field != "TemplateData.Name" {
		t.Errorf("RenderTemplate without data = %v; want missing_variable on TemplateData.Name", err)
	}
	list, err := c.ListTemplates(ctx)
	if err != nil || len(list) != 1 || list[0].Name != "welcome" || list[0].Version != 2 {
		t.Errorf("ListTemplates = %+v, %v; want welcome at version 2", list, err)
	}
	if err := c.DeleteTemplate(ctx, "welcome"); err != nil {
		t.Errorf("DeleteTemplate = %v", err)
	}
	if err := c.DeleteTemplate(ctx, "welcome"); !errors.As(err, &ae) || ae.Status != http.StatusNotFound {
		t.Errorf("DeleteTemplate again = %v; want a 404 APIError", err)
	}
	if list, err := c.ListTemplates(ctx); err != nil || len(list) != 0 {
		t.Errorf("ListTemplates after the delete = %+v, %v; want none", list, err)
	}
}
