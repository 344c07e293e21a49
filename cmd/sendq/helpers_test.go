package main

import (
	"bytes"
	"io"
	"mime/quotedprintable"
	"testing"
)

func newQP(b []byte) io.Reader { return quotedprintable.NewReader(bytes.NewReader(b)) }

// checkOpenAPI is replaced by the OpenAPI validator once it exists.
func checkOpenAPI(t *testing.T, base string, seen []httpResult) {}
