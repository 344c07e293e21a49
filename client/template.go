package client

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

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

// GetTemplate returns version n of template name, or its current version
// for n = 0. An unknown name or version is an *APIError with Status 404
// (Field "name" for the name, "n" for the version).
func (c *Client) GetTemplate(ctx context.Context, name string, n int) (*StoredTemplate, error) {
	if name == "" {
		return nil, errors.New("sendq client: no template name")
	}
	path := "/v1/templates/" + url.PathEscape(name)
	if n != 0 {
		path += "/versions/" + strconv.Itoa(n)
	}
	var t StoredTemplate
	if _, err := c.do(ctx, http.MethodGet, path, nil, "", &t); err != nil {
		return nil, err
	}
	return &t, nil
}
