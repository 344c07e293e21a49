package producer

import (
	"errors"
	"reflect"
	"testing"

	"github.com/sendq/sendq/queue"
)

// TestDecodeRequestErrorPaths checks how errors of the JSON decoder name
// the member at fault, beyond the hostile-input table: nested members,
// names spelled with the delimiters case:ignore would skip, bad JSON
// after another fault.
func TestDecodeRequestErrorPaths(t *testing.T) {
	att := func(members string) string { return minimal(`"Attachments":[{` + members + `}]`) }
	tests := []struct {
		name, body, field, code string
	}{
		{"underscore in a name", minimal(`"Is_Html":true`), "Is_Html", "unknown_field"},
		{"dash in a name", minimal(`"Read-Receipt":"r@example.com"`), "Read-Receipt", "unknown_field"},
		{"dash in an attachment name", att(`"Content-Data":"YQ==","FileName":"a.txt"`), "Attachments[0].Content-Data", "unknown_field"},
		{"unknown name with a slash", minimal(`"a/b~c":1`), "a/b~c", "unknown_field"},
		{"exact duplicate in an attachment", att(`"ContentData":"YQ==","FileName":"a.txt","FileName":"b.txt"`), "Attachments[0].FileName", "duplicate_field"},
		{"case of a nested name", minimal(`"attachments":[{"contentdata":1,"FileName":"a.txt"}]`), "Attachments[0].ContentData", "invalid_field"},
		{"second attachment", minimal(`"Attachments":[{"ContentData":"YQ==","FileName":"a.txt"},{"ContentData":"YQ==","FileName":7}]`), "Attachments[1].FileName", "invalid_field"},
		{"invalid UTF-8 in an attachment name", att(`"ContentData":"YQ==","File` + "\xff" + `Name":"a.txt"`), "Attachments", "invalid_field"},
		{"lone surrogate in an attachment", att(`"ContentData":"YQ==","FileName":"\udc00.txt"`), "Attachments", "invalid_field"},
		{"number in a To array", `{"From":"f@example.com","To":["t@example.com",1]}`, "To", "invalid_field"},
		{"IsHtml as object", minimal(`"IsHtml":{"a":1}`), "IsHtml", "invalid_field"},
		{"DeliveryReceipt as array", minimal(`"DeliveryReceipt":[true]`), "DeliveryReceipt", "invalid_field"},
		{"attachment null", minimal(`"Attachments":[{"ContentData":"YQ==","FileName":"a.txt"},null]`), "Attachments[1]", "invalid_field"},
		{"ContentId as number", att(`"ContentData":"YQ==","FileName":"a.txt","ContentId":1`), "Attachments[0].ContentId", "invalid_field"},
		// Bad JSON is the body's fault, whatever came before it.
		{"wrong type, then bad JSON", minimal(`"Subject":1,"Body":}`), "", "invalid_json"},
		{"invalid UTF-8, then bad JSON", minimal(`"Subject":"` + "\xff" + `","Body":}`), "", "invalid_json"},
		{"duplicate, then bad JSON", minimal(`"Subject":"a","subject":"b",`), "", "invalid_json"},
		{"unknown, then bad JSON", minimal(`"Sender":"a"]`), "", "invalid_json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := DecodeRequest([]byte(tt.body), Limits{})
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("DecodeRequest(%q) = %+v, %v; want a *FieldError", tt.body, e, err)
			}
			if fe.Field != tt.field || fe.Code != tt.code || fe.Message == "" {
				t.Errorf("DecodeRequest(%q) error = %#v; want field %q, code %s and a message", tt.body, fe, tt.field, tt.code)
			}
		})
	}
}

// TestDecodeRequestPresence checks that the request says which members a
// body gave, as a batch's defaults and messages need: absent and null
// are nil, anything else is set, empty values included.
func TestDecodeRequestPresence(t *testing.T) {
	r, err := decodeRequest([]byte(`{"To":"t@example.com","CC":null,"Subject":"","IsHtml":false,"Attachments":[],"DeliveryReceipt":null}`))
	if err != nil {
		t.Fatal(err)
	}
	set := map[string]bool{
		"From": r.From != nil, "To": r.To != nil, "CC": r.CC != nil, "Bcc": r.Bcc != nil,
		"Subject": r.Subject != nil, "Body": r.Body != nil, "IsHtml": r.IsHtml != nil,
		"Attachments": r.Attachments != nil, "DeliveryReceipt": r.DeliveryReceipt != nil,
	}
	want := map[string]bool{"To": true, "Subject": true, "IsHtml": true, "Attachments": true}
	for name, got := range set {
		if got != want[name] {
			t.Errorf("decodeRequest: %s set = %v; want %v", name, got, want[name])
		}
	}
}

// TestDecodeRequestNullInAddressArray: a null item of a To, CC or Bcc
// array is an empty string, no address, as encoding/json read it.
func TestDecodeRequestNullInAddressArray(t *testing.T) {
	body := `{"From":"f@example.com","To":[null,"t@example.com"],"CC":[null]}`
	e, err := DecodeRequest([]byte(body), Limits{})
	if err != nil {
		t.Fatalf("DecodeRequest(%q) error: %v", body, err)
	}
	if want := []queue.Address{{Address: "t@example.com"}}; !reflect.DeepEqual(e.To, want) || e.Cc != nil {
		t.Errorf("DecodeRequest(%q) To = %+v, CC = %+v; want %+v and none", body, e.To, e.Cc, want)
	}
}

// TestDecodeRequestUnicodeSpaceAround: Unicode white space around the
// body, not only JSON's, is accepted, as it always was.
func TestDecodeRequestUnicodeSpaceAround(t *testing.T) {
	body := "\f\v " + minimal("") + "\u00a0\u0085\n"
	if _, err := DecodeRequest([]byte(body), Limits{}); err != nil {
		t.Errorf("DecodeRequest(%q) error: %v", body, err)
	}
}
