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

// TemplateSource is what a template is made of: Go templates for the
// Subject and at least one of Html (rendered with html/template) and Text.
type TemplateSource struct {
	Subject string `json:"Subject"`
	Html    string `json:"Html,omitempty"`
	Text    string `json:"Text,omitempty"`
}

// Template is one stored version of a template.
type Template struct {
	Name      string    `json:"name"`
	Version   int       `json:"version"`
	CreatedAt time.Time `json:"created_at"`
	Subject   string    `json:"subject"`
	Html      string    `json:"html,omitempty"`
	Text      string    `json:"text,omitempty"`
}

// PutTemplate stores src as a new version of template name (names are
// [a-z0-9][a-z0-9._-]{0,63}) and makes it current. The answer's Subject,
// Html and Text are empty. A template that does not parse is an *APIError
// with Status 400 naming the part and line.
func (c *Client) PutTemplate(ctx context.Context, name string, src TemplateSource) (*Template, error) {
	if name == "" {
		return nil, errors.New("sendq client: no template name")
	}
	body, err := json.Marshal(src)
	if err != nil {
		return nil, fmt.Errorf("sendq client: encode the template: %w", err)
	}
	var t Template
	if _, err := c.do(ctx, http.MethodPut, "/v1/templates/"+url.PathEscape(name), body, "", &t); err != nil {
		return nil, err
	}
	return &t, nil
}

// Template returns version n of template name, or its current version for
// n = 0. An unknown name or version is an *APIError with Status 404.
func (c *Client) Template(ctx context.Context, name string, n int) (*Template, error) {
	if name == "" {
		return nil, errors.New("sendq client: no template name")
	}
	path := "/v1/templates/" + url.PathEscape(name)
	if n != 0 {
		path += "/versions/" + strconv.Itoa(n)
	}
	var t Template
	if _, err := c.do(ctx, http.MethodGet, path, nil, "", &t); err != nil {
		return nil, err
	}
	return &t, nil
}
