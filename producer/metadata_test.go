package producer

import (
	"errors"
	"fmt"
	"maps"
	"strings"
	"testing"
)

func TestDecodeRequestMetadata(t *testing.T) {
	t.Parallel()
	eleven := make([]string, 11)
	for i := range eleven {
		eleven[i] = fmt.Sprintf(`"k%d":"v"`, i)
	}
	for _, tc := range []struct {
		name, metadata string
		want           map[string]string
		field, code    string // of the error, when one is wanted
	}{
		{name: "pairs", metadata: `{"order_id":"1234","Tenant":"contoso","empty":""}`,
			want: map[string]string{"order_id": "1234", "Tenant": "contoso", "empty": ""}},
		{name: "escapes and unicode", metadata: `{"k\u00e9":"a\"b\\c \u20ac"}`, want: map[string]string{"ké": `a"b\c €`}},
		{name: "null", metadata: `null`},
		{name: "empty object", metadata: `{}`},
		{name: "ten pairs", metadata: "{" + strings.Join(eleven[:10], ",") + "}",
			want: func() map[string]string {
				m := map[string]string{}
				for i := range 10 {
					m[fmt.Sprintf("k%d", i)] = "v"
				}
				return m
			}()},
		{name: "eleven pairs", metadata: "{" + strings.Join(eleven, ",") + "}", field: "Metadata", code: "invalid_field"},
		{name: "not an object", metadata: `"order=1"`, field: "Metadata", code: "invalid_field"},
		{name: "array", metadata: `[{"a":"b"}]`, field: "Metadata", code: "invalid_field"},
		{name: "number value", metadata: `{"order_id":1234}`, field: "Metadata.order_id", code: "invalid_field"},
		{name: "object value", metadata: `{"a":"b","nested":{"x":"y"}}`, field: "Metadata.nested", code: "invalid_field"},
		{name: "null value", metadata: `{"a":null}`, field: "Metadata.a", code: "invalid_field"},
		{name: "bool value", metadata: `{"a":true}`, field: "Metadata.a", code: "invalid_field"},
		{name: "key repeated", metadata: `{"a":"1","a":"2"}`, field: "Metadata.a", code: "duplicate_field"},
		{name: "empty key", metadata: `{"":"x"}`, field: "Metadata.", code: "invalid_field"},
		{name: "key too long", metadata: `{"` + strings.Repeat("k", 41) + `":"x"}`, field: "Metadata." + strings.Repeat("k", 41), code: "invalid_field"},
		{name: "key of 40", metadata: `{"` + strings.Repeat("é", 40) + `":"x"}`, want: map[string]string{strings.Repeat("é", 40): "x"}},
		{name: "key with a newline", metadata: `{"a\nb":"x"}`, field: "Metadata.a\nb", code: "invalid_field"},
		{name: "value too long", metadata: `{"note":"` + strings.Repeat("v", 501) + `"}`, field: "Metadata.note", code: "invalid_field"},
		{name: "value of 500", metadata: `{"note":"` + strings.Repeat("€", 500) + `"}`, want: map[string]string{"note": strings.Repeat("€", 500)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := `{"From":"s@example.com","To":"a@example.com","metadata":` + tc.metadata + `}`
			e, err := DecodeRequest([]byte(body), Limits{})
			if tc.field != "" {
				var fe *FieldError
				if !errors.As(err, &fe) || fe.Field != tc.field || fe.Code != tc.code {
					t.Fatalf("DecodeRequest(Metadata %s) error = %v; want a %s error on field %q", tc.metadata, err, tc.code, tc.field)
				}
				return
			}
			if err != nil {
				t.Fatalf("DecodeRequest(Metadata %s) error: %v", tc.metadata, err)
			}
			if !maps.Equal(e.Metadata, tc.want) || (tc.want == nil) != (e.Metadata == nil) {
				t.Errorf("DecodeRequest(Metadata %s).Metadata = %#v; want %#v", tc.metadata, e.Metadata, tc.want)
			}
		})
	}
}
