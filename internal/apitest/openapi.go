// Package apitest checks HTTP exchanges with sendq against its OpenAPI
// description (producer/openapi.yaml), so tests notice when the code and
// the published contract drift apart.
package apitest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"

	"github.com/sendq/sendq/producer"
)

// Validator checks requests and responses against producer.OpenAPI. It is
// safe for concurrent use by parallel tests.
type Validator struct {
	doc    *openapi3.T
	router routers.Router
	opts   *openapi3filter.Options
	// mapPath, if set, gives the path a request is checked as.
	mapPath func(*http.Request) string
}

// NewValidator loads and validates producer.OpenAPI; a document that does
// not load or validate fails t.
func NewValidator(t testing.TB) *Validator {
	t.Helper()
	v, err := newValidator(producer.OpenAPI)
	if err != nil {
		t.Fatalf("openapi.yaml: %v", err)
	}
	return v
}

// registerTextJSON teaches openapi3filter to read text/json bodies, which
// sendq takes as it takes application/json (the connector names both).
var registerTextJSON = sync.OnceFunc(func() {
	openapi3filter.RegisterBodyDecoder("text/json", openapi3filter.JSONBodyDecoder)
})

// htmlDecoder lets the document describe text/html bodies (the
// unsubscribe pages): their content is checked by the tests, not here.
var htmlDecoder sync.Once

func newValidator(spec []byte) (*Validator, error) {
	htmlDecoder.Do(func() { openapi3filter.RegisterBodyDecoder("text/html", openapi3filter.FileBodyDecoder) })
	doc, err := openapi3.NewLoader().LoadFromData(spec)
	if err != nil {
		return nil, fmt.Errorf("load: %w", err)
	}
	return newValidatorDoc(doc)
}

// newValidatorDoc validates doc and returns a Validator of it.
func newValidatorDoc(doc *openapi3.T) (*Validator, error) {
	registerTextJSON()
	if err := doc.Validate(context.Background()); err != nil {
		return nil, fmt.Errorf("validate: %w", err)
	}
	// Tests serve on 127.0.0.1:<random port>: match paths only, whatever
	// the document's servers say.
	doc.Servers = nil
	router, err := legacy.NewRouter(doc)
	if err != nil {
		return nil, fmt.Errorf("router: %w", err)
	}
	return &Validator{
		doc:    doc,
		router: router,
		opts: &openapi3filter.Options{
			// Authentication is the server's business; the document only
			// says which scheme it uses.
			AuthenticationFunc: openapi3filter.NoopAuthenticationFunc,
			// A status the document does not list is a mismatch.
			IncludeResponseStatus: true,
			MultiError:            true,
			// Never add defaults to the caller's request.
			SkipSettingDefaults: true,
			// Name the value at fault without dumping its whole schema
			// (an OpenAPI 3.0 option: 3.1 documents refuse it).
			SchemaValidationOptions: []openapi3.SchemaValidationOption{openapi3.DisableSchemaErrorDetails()},
		},
	}, nil
}

// Check validates one exchange: req as sent with body reqBody, and the
// resp it got with body respBody (resp.Body is not read). Mismatches are
// reported with t.Errorf, naming the route and the status.
//
// The response is always checked. The request is checked too, but a
// request the document rejects is reported only when the server accepted
// it (2xx): tests send invalid requests on purpose to get a 4xx, and the
// document must never be stricter than the server.
func (v *Validator) Check(t testing.TB, req *http.Request, reqBody []byte, resp *http.Response, respBody []byte) {
	t.Helper()
	for _, msg := range v.check(req, reqBody, resp, respBody) {
		t.Errorf("%s", msg)
	}
}

// check returns a message for every mismatch.
func (v *Validator) check(req *http.Request, reqBody []byte, resp *http.Response, respBody []byte) []string {
	// FindRoute and ValidateRequest read req; give them a copy with a
	// fresh body so the caller's request is left alone.
	r := req.Clone(context.Background())
	r.Body = io.NopCloser(bytes.NewReader(reqBody))
	r.ContentLength = int64(len(reqBody))
	if v.mapPath != nil {
		r.URL.Path, r.URL.RawPath = v.mapPath(r), ""
	}

	name := req.Method + " " + req.URL.Path
	route, pathParams, err := v.router.FindRoute(r)
	if err != nil {
		return []string{fmt.Sprintf("openapi: %s (status %d): no operation in the document: %v", name, resp.StatusCode, err)}
	}
	name = route.Method + " " + route.Path

	reqInput := &openapi3filter.RequestValidationInput{
		Request:    r,
		PathParams: pathParams,
		Route:      route,
		Options:    v.opts,
	}
	var msgs []string
	if err := openapi3filter.ValidateRequest(context.Background(), reqInput); err != nil && resp.StatusCode/100 == 2 {
		msgs = append(msgs, fmt.Sprintf("openapi: %s: the server answered %d to a request the document rejects: %v", name, resp.StatusCode, err))
	}

	header := resp.Header
	if header == nil {
		header = http.Header{}
	}
	respInput := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: reqInput,
		Status:                 resp.StatusCode,
		Header:                 header,
		Body:                   io.NopCloser(bytes.NewReader(respBody)),
		Options:                v.opts,
	}
	if err := openapi3filter.ValidateResponse(context.Background(), respInput); err != nil {
		msgs = append(msgs, fmt.Sprintf("openapi: %s: response %d does not match the document: %v\nbody: %s", name, resp.StatusCode, err, excerpt(respBody)))
	}
	return msgs
}

// excerpt returns the start of a body, for a failure message.
func excerpt(b []byte) string {
	const max = 512
	if len(b) > max {
		return string(b[:max]) + "..."
	}
	return string(b)
}
