package main

import (
	"bytes"
	"io"
	"mime/quotedprintable"
	"strings"
	"testing"

	"github.com/sendq/sendq/internal/apitest"
	"github.com/sendq/sendq/producer"
)

func newQP(b []byte) io.Reader { return quotedprintable.NewReader(bytes.NewReader(b)) }

// checkOpenAPI validates every request and response the end-to-end test
// made against the OpenAPI document the binary serves.
func checkOpenAPI(t *testing.T, base string, seen []httpResult) {
	t.Helper()
	served := call(t, "GET", base+"/openapi.yaml", nil, nil)
	if !bytes.Equal(served.Body, producer.OpenAPI) {
		t.Errorf("GET /openapi.yaml does not serve producer/openapi.yaml")
	}
	v := apitest.NewValidator(t)
	for _, r := range seen {
		v.Check(t, r.Req, r.ReqBody, r.Resp, r.Body)
	}
}

func splitLines(s string) []string { return strings.Split(s, "\n") }
