package client

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
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

// TemplateVersion is the answer to PutTemplate.
type TemplateVersion struct {
	Name      string    `json:"name"`
	Version   int       `json:"version"`
	CreatedAt time.Time `json:"created_at"`
}

// PutTemplate stores t as a new version of template name and makes it
// the current one. A template that does not parse is an *APIError with
// Code invalid_template, its Field the part at fault. A retry after a
// lost answer may store the same source twice, as two versions.
func (c *Client) PutTemplate(ctx context.Context, name string, t Template) (*TemplateVersion, error) {
	body, err := json.Marshal(t)
	if err != nil {
		return nil, fmt.Errorf("sendq client: encode the template: %w", err)
	}
	var v TemplateVersion
	if _, err := c.do(ctx, http.MethodPut, "/v1/templates/"+url.PathEscape(name), body, "", &v); err != nil {
		return nil, err
	}
	return &v, nil
}
