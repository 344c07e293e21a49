package queue

import (
	"bytes"
	jsonv1 "encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

// payloadFixtures are the emails of testdata/payload-v1-*.json, each
// file written by NewTask of the release before the payload encoder moved
// to github.com/go-json-experiment/json (the hand-written encoder of
// commit 40526e0). A worker must keep reading what an older API queued.
func payloadFixtures() map[string]*Email {
	created := time.Date(2026, 11, 27, 9, 30, 15, 123456789, time.UTC)
	return map[string]*Email{
		"full": {
			V: 1, ID: "01a21a7f-c7f9-7166-8b55-540c1132fe89", CreatedAt: created,
			From: Address{Name: "Sales Bot", Address: "sales-bot@contoso.example"},
			To: []Address{
				{Address: "recipient1@contoso.example"},
				{Name: "Kim \"Minji\" 김민지", Address: "minji.kim@contoso.example"},
			},
			Cc:              []Address{{Address: "owner@contoso.example"}},
			Bcc:             []Address{{Name: "Audit", Address: "audit@contoso.example"}},
			Subject:         "새 잠재 고객 생성됨 <Fabrikam> & co \u2028",
			Body:            "<p>A new lead: <b>Fabrikam</b> &amp; co</p>\r\n<img src=\"cid:logo\">\t\\ \u2029 é",
			IsHTML:          true,
			Importance:      ImportanceHigh,
			ReadReceipt:     "reader@contoso.example",
			DeliveryReceipt: true,
			ReturnPath:      "dsn@contoso.example",
			Attachments: []Attachment{
				{FileName: "lead.pdf", ContentType: "application/pdf", Data: []byte("%PDF-1.4\n\x00\xff")},
				{FileName: "logo.png", ContentType: "image/png", ContentID: "logo", Data: []byte("\x89PNG\r\n\x1a\n")},
				{FileName: "empty.txt", Data: []byte{}},
			},
			SendAt:   time.Date(2026, 11, 28, 8, 0, 0, 0, time.UTC),
			BodyHash: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
		},
		"minimal": {
			V: 1, ID: "0197a1b2-0000-7000-8000-000000000001", CreatedAt: created,
			From:       Address{Address: "f@example.com"},
			Bcc:        []Address{{Address: "b@example.com"}},
			Importance: ImportanceNormal,
		},
	}
}

// TestDecodeEmailOlderPayloads decodes payloads written by the previous
// release's encoder, kept as testdata, into the emails they were made from.
func TestDecodeEmailOlderPayloads(t *testing.T) {
	for name, want := range payloadFixtures() {
		file := filepath.Join("testdata", "payload-v1-"+name+".json")
		payload, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeEmail(payload)
		if err != nil {
			t.Fatalf("DecodeEmail(%s) error: %v", file, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("DecodeEmail(%s) =\n%+v\nwant\n%+v", file, got, want)
		}
	}
}

// TestNewTaskPayloadReadByOlderWorkers decodes what NewTask writes as a
// worker of the previous release does (encoding/json v1 into Email, then
// the version check) and as this one does, and wants the email back.
func TestNewTaskPayloadReadByOlderWorkers(t *testing.T) {
	for name, e := range payloadFixtures() {
		task, err := NewTask(e)
		if err != nil {
			t.Fatalf("NewTask(%s) error: %v", name, err)
		}
		var old Email
		if err := jsonv1.Unmarshal(task.Payload(), &old); err != nil {
			t.Fatalf("encoding/json.Unmarshal(NewTask(%s)) error: %v", name, err)
		}
		if old.V != PayloadVersion || !reflect.DeepEqual(&old, e) {
			t.Errorf("encoding/json.Unmarshal(NewTask(%s)) =\n%+v\nwant\n%+v", name, &old, e)
		}
		got, err := DecodeEmail(task.Payload())
		if err != nil {
			t.Fatalf("DecodeEmail(NewTask(%s)) error: %v", name, err)
		}
		if !reflect.DeepEqual(got, e) {
			t.Errorf("DecodeEmail(NewTask(%s)) =\n%+v\nwant\n%+v", name, got, e)
		}
	}
}

// A templated email's payload (Text, Template, TemplateVersion) stays
// version 1: a worker of the previous release, which has none of these
// members, decodes it (unknown members ignored, by encoding/json v1 and
// by this decoder) into the same email without them, and sends its HTML.
func TestTemplatedPayloadReadByOlderWorkers(t *testing.T) {
	e := payloadFixtures()["minimal"]
	e.Subject, e.Body, e.IsHTML = "Order 1 shipped", "<p>Hi</p>", true
	e.Text, e.Template, e.TemplateVersion = "Hi\n", "order-shipped", 3
	task, err := NewTask(e)
	if err != nil {
		t.Fatal(err)
	}
	// The previous release's Email: this one without the new members.
	type previous struct {
		V       int    `json:"v"`
		ID      string `json:"id"`
		Subject string `json:"subject,omitempty"`
		Body    string `json:"body,omitempty"`
		IsHTML  bool   `json:"is_html"`
	}
	var old previous
	if err := jsonv1.Unmarshal(task.Payload(), &old); err != nil || old.V != 1 || old.Body != e.Body || !old.IsHTML {
		t.Errorf("previous release reads %+v, %v; want version 1 with the HTML body", old, err)
	}
	got, err := DecodeEmail(task.Payload())
	if err != nil || !reflect.DeepEqual(got, e) {
		t.Errorf("DecodeEmail = %+v, %v; want %+v", got, err, e)
	}
	// And this release reads a payload with a member it does not know
	// (what a later release may add) the same way.
	withMore := append(bytes.TrimSuffix(task.Payload(), []byte("}")), []byte(`,"later_member":{"x":1}}`)...)
	if got, err := DecodeEmail(withMore); err != nil || !reflect.DeepEqual(got, e) {
		t.Errorf("DecodeEmail(with an unknown member) = %+v, %v", got, err)
	}
}
