package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// Template is a template's source: Subject and at least one of Html and
// Text, Go template text ({{.FirstName}}). Html is rendered with
// html/template, Subject and Text with text/template.
type Template struct {
	Subject string `json:"Subject"`
	Html    string `json:"Html,omitempty"`
	Text    string `json:"Text,omitempty"`
}

// TemplateVersion names one version of a template: the answer to
// PutTemplate, and an entry of ListTemplates (the current version).
type TemplateVersion struct {
	Name      string    `json:"name"`
	Version   int       `json:"version"`
	CreatedAt time.Time `json:"created_at"`
}

// StoredTemplate is one stored version of a template: its name, version
// and source.
type StoredTemplate struct {
	Name      string    `json:"name"`
	Version   int       `json:"version"`
	CreatedAt time.Time `json:"created_at"`
	Subject   string    `json:"subject"`
	Html      string    `json:"html,omitempty"`
	Text      string    `json:"text,omitempty"`
}

// Rendered is what a template renders with some data: what a send with
// that data would carry.
type Rendered struct {
	Version int    `json:"version,omitempty"`
	Subject string `json:"subject"`
	Html    string `json:"html"`
	Text    string `json:"text"`
}

func templatePath(name string) (string, error) {
	if name == "" {
		return "", errors.New("sendq client: no template name")
	}
	return "/v1/templates/" + url.PathEscape(name), nil
}

// PutTemplate stores t as a new version of template name and makes it
// the current one. A template that does not parse is an *APIError with
// Code invalid_template, its Field the part at fault. The current
// version's own source again stores nothing and answers that version, so
// a retry after a lost answer is safe.
func (c *Client) PutTemplate(ctx context.Context, name string, t Template) (*TemplateVersion, error) {
	path, err := templatePath(name)
	if err != nil {
		return nil, err
	}
	body, err := json.Marshal(t)
	if err != nil {
		return nil, fmt.Errorf("sendq client: encode the template: %w", err)
	}
	var v TemplateVersion
	if _, err := c.do(ctx, http.MethodPut, path, body, "", &v); err != nil {
		return nil, err
	}
	return &v, nil
}

// GetTemplate returns version n of template name, or its current version
// for n = 0. An unknown name or version is an *APIError with Status 404
// (Field "name" for the name, "n" for the version).
func (c *Client) GetTemplate(ctx context.Context, name string, n int) (*StoredTemplate, error) {
	path, err := templatePath(name)
	if err != nil {
		return nil, err
	}
	if n != 0 {
		path += "/versions/" + strconv.Itoa(n)
	}
	var t StoredTemplate
	if _, err := c.do(ctx, http.MethodGet, path, nil, "", &t); err != nil {
		return nil, err
	}
	return &t, nil
}

// ListTemplates returns the caller's templates, each with its current
// version.
func (c *Client) ListTemplates(ctx context.Context) ([]TemplateVersion, error) {
	var out struct {
		Templates []TemplateVersion `json:"templates"`
	}
	if _, err := c.do(ctx, http.MethodGet, "/v1/templates", nil, "", &out); err != nil {
		return nil, err
	}
	return out.Templates, nil
}

// DeleteTemplate removes template name and every version of it; emails
// already queued keep what they were accepted with. An unknown name is an
// *APIError with Status 404.
func (c *Client) DeleteTemplate(ctx context.Context, name string) error {
	path, err := templatePath(name)
	if err != nil {
		return err
	}
	_, err = c.do(ctx, http.MethodDelete, path, nil, "", nil)
	return err
}

// RenderTemplate renders the current version of template name with data,
// as a send with that TemplateData would: a variable the template uses and
// data lacks is an *APIError with Code missing_variable and Field
// TemplateData.<name>.
func (c *Client) RenderTemplate(ctx context.Context, name string, data map[string]any) (*Rendered, error) {
	path, err := templatePath(name)
	if err != nil {
		return nil, err
	}
	body, err := json.Marshal(map[string]any{"TemplateData": data})
	if err != nil {
		return nil, fmt.Errorf("sendq client: encode the template data: %w", err)
	}
	var r Rendered
	if _, err := c.do(ctx, http.MethodPost, path+"/render", body, "", &r); err != nil {
		return nil, err
	}
	return &r, nil
}
