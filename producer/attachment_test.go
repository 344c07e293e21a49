package producer

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// forwardedEML is a message saved from a mail client, as a user forwards it.
const forwardedEML = "From: Kim Minji <minji.kim@contoso.com>\nTo: sales@contoso.com\nSubject: =?UTF-8?B?7IOIIOyeoOyerCDqs6DqsJ0=?=\n" +
	"MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n새 잠재 고객: Fabrikam\n.\n끝\n"

// message/rfc822 and multipart/* attachments are sent unencoded (RFC 2046
// 5.2.1, RFC 2045 6.4): the intake takes what can travel so and refuses,
// naming the field, what cannot (issue 11).
func TestDecodeRequestUnencodedAttachments(t *testing.T) {
	multi := "--b1\r\nContent-Type: text/plain\r\n\r\none\r\n--b1\r\nContent-Type: text/plain\r\n\r\ntwo\r\n--b1--\r\n"
	tests := []struct {
		name        string
		contentType string
		data        string
		wantField   string // "" means accepted
	}{
		{"forwarded message", "message/rfc822", forwardedEML, ""},
		{"forwarded message, CRLF", "message/rfc822", strings.ReplaceAll(forwardedEML, "\n", "\r\n"), ""},
		{"message with a NUL", "message/rfc822", "Subject: x\n\na\x00b\n", "Attachments[0].ContentData"},
		{"message with a line over 998 bytes", "message/rfc822", "Subject: x\n\n" + strings.Repeat("a", 999) + "\n", "Attachments[0].ContentData"},
		{"message with a line of 998 bytes", "message/rfc822", "Subject: x\n\n" + strings.Repeat("a", 998) + "\r\n", ""},
		{"binary as a message", "message/rfc822", "\x89PNG\r\n\x1a\n", "Attachments[0].ContentData"},
		{"not a message", "message/rfc822", "just some text\n", "Attachments[0].ContentData"},
		{"multipart", `multipart/mixed; boundary="b1"`, multi, ""},
		{"multipart without its boundary parameter", "multipart/mixed", multi, "Attachments[0].ContentType"},
		{"multipart with another boundary", `multipart/mixed; boundary="zz"`, multi, "Attachments[0].ContentData"},
		{"multipart not closed", `multipart/alternative; boundary=b1`, "--b1\r\n\r\none\r\n", "Attachments[0].ContentData"},
		{"other types stay base64 and free", "application/octet-stream", "a\x00b" + strings.Repeat("c", 2000), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			att, _ := json.Marshal(map[string]string{"ContentData": base64.StdEncoding.EncodeToString([]byte(tt.data)),
				"FileName": "fwd.eml", "ContentType": tt.contentType})
			e, err := DecodeRequest([]byte(minimal(`"Attachments":[`+string(att)+`]`)), Limits{})
			var fe *FieldError
			switch {
			case tt.wantField == "" && err != nil:
				t.Fatalf("DecodeRequest: %v; want accepted", err)
			case tt.wantField == "":
				if !bytes.Equal(e.Attachments[0].Data, []byte(tt.data)) {
					t.Errorf("data = %q; want %q", e.Attachments[0].Data, tt.data)
				}
			case !errors.As(err, &fe) || fe.Field != tt.wantField:
				t.Errorf("DecodeRequest = %v; want a 400 naming %s", err, tt.wantField)
			}
		})
	}
}
