package producer

import (
	"errors"
	"strings"
	"testing"
)

func FuzzDecodeBatch(f *testing.F) {
	for _, s := range []string{
		`{"Defaults": {"From": "Acme <no-reply@acme.example>", "Subject": "Shipped", "Priority": "bulk"},
		  "Messages": [{"To": "ada@example.com", "Body": "<p>Hi</p>", "IdempotencyKey": "ship/A-1"},
		               {"To": "bob@example.com;carol@example.com", "Subject": "Override"}],
		  "Validation": "permissive"}`,
		`{"Messages": [{"From": "a@example.com", "To": "x"}, null, 3, [], {"to": "b@example.com", "TO": "c@example.com"}], "Validation": "strict"}`,
		`{"defaults": {"From": "a@example.com", "Attachments": [{"ContentData": "YQ==", "FileName": "a.txt"}]}, "messages": [{"To": "b@example.com", "Attachments": null}]}`,
		`{"Defaults": {"Nope": 1}, "Messages": [{}]}`,
		`{"Messages": [{"From": "a@example.com", "To": "b@example.com", "IdempotencyKey": "k"}, {"From": "a@example.com", "To": "b@example.com", "IdempotencyKey": "k"}]}`,
		`{"Messages": "x"}`, `[]`, `{"Messages": [{"Subject": "\ud83d"}]}`, `{"Messages": [`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		emails, results, err := DecodeBatch(body, Limits{MaxRecipients: fuzzLimit}, 8)
		if err != nil {
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("error %v is not a *FieldError", err)
			}
			if fe.Field == "" && fe.Code != "invalid_json" {
				t.Fatalf("error %+v names no field and is not invalid_json", fe)
			}
			return
		}
		if len(emails) != len(results) || len(results) == 0 || len(results) > 8 {
			t.Fatalf("%d emails, %d results", len(emails), len(results))
		}
		for i, r := range results {
			if r.Index != i {
				t.Fatalf("results[%d].Index = %d", i, r.Index)
			}
			switch {
			case emails[i] == nil && r.Error == nil:
				t.Fatalf("message %d: neither an email nor an error", i)
			case emails[i] != nil && r.Error != nil:
				t.Fatalf("message %d: both an email and an error %+v", i, r.Error)
			case r.Error != nil && !strings.HasPrefix(r.Error.Field, "Messages[") && !strings.HasPrefix(r.Error.Field, "Defaults."):
				t.Fatalf("message %d: error %+v names neither its message nor a default", i, r.Error)
			case emails[i] != nil && len(emails[i].Recipients()) == 0:
				t.Fatalf("message %d: an email without recipients", i)
			}
		}
	})
}
