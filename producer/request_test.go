package producer

import (
	"encoding/base64"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sendq/sendq/queue"
)

// seedBody is a Send Email body as the Logic Apps SMTP connector sends it.
const seedBody = `{
  "From": "Contoso CRM <crm@contoso.com>",
  "To": "sales@contoso.com;Kim Minji <minji.kim@contoso.com>",
  "CC": "manager@contoso.com",
  "Bcc": "audit@contoso.com",
  "Subject": "새 잠재 고객 생성됨",
  "Body": "<p>새 잠재 고객: <b>Fabrikam</b></p><img src=\"cid:logo\">",
  "IsHtml": true,
  "Importance": "High",
  "Attachments": [
    {"ContentData": "JVBERi0xLjQK", "ContentType": "application/pdf", "FileName": "lead.pdf"},
    {"ContentData": "iVBORw0KGgo=", "ContentType": "image/png", "FileName": "logo.png", "ContentId": "logo"}
  ]
}`

func seedEmail() *queue.Email {
	return &queue.Email{
		From: queue.Address{Name: "Contoso CRM", Address: "crm@contoso.com"},
		To: []queue.Address{
			{Address: "sales@contoso.com"},
			{Name: "Kim Minji", Address: "minji.kim@contoso.com"},
		},
		Cc:         []queue.Address{{Address: "manager@contoso.com"}},
		Bcc:        []queue.Address{{Address: "audit@contoso.com"}},
		Subject:    "새 잠재 고객 생성됨",
		Body:       `<p>새 잠재 고객: <b>Fabrikam</b></p><img src="cid:logo">`,
		IsHTML:     true,
		Importance: queue.ImportanceHigh,
		Attachments: []queue.Attachment{
			{FileName: "lead.pdf", ContentType: "application/pdf", Data: []byte("%PDF-1.4\n")},
			{FileName: "logo.png", ContentType: "image/png", ContentID: "logo", Data: []byte("\x89PNG\r\n\x1a\n")},
		},
	}
}

func TestDecodeRequestSeed(t *testing.T) {
	got, err := DecodeRequest([]byte(seedBody), Limits{})
	if err != nil {
		t.Fatalf("DecodeRequest(seed) error: %v", err)
	}
	if want := seedEmail(); !reflect.DeepEqual(got, want) {
		t.Errorf("DecodeRequest(seed) =\n%+v\nwant\n%+v", got, want)
	}
}

// minimal returns a valid body with the given extra members.
func minimal(extra string) string {
	if extra != "" {
		extra = "," + extra
	}
	return `{"From":"f@example.com","To":"t@example.com"` + extra + `}`
}

func TestDecodeRequest(t *testing.T) {
	from := queue.Address{Address: "f@example.com"}
	to := []queue.Address{{Address: "t@example.com"}}
	// base returns the email minimal("") decodes to, changed by edit.
	base := func(edit func(e *queue.Email)) *queue.Email {
		e := &queue.Email{From: from, To: to, IsHTML: true, Importance: queue.ImportanceNormal}
		if edit != nil {
			edit(e)
		}
		return e
	}
	b64 := base64.StdEncoding.EncodeToString
	tests := []struct {
		name string
		body string
		lim  Limits
		want *queue.Email
	}{
		{"minimal", minimal(""), Limits{}, base(nil)},
		{
			"names are case-insensitive",
			`{"from":"f@example.com","TO":"t@example.com","cc":"c@example.com","BCC":"b@example.com","subject":"Hi","BODY":"x","ishtml":false,"IMPORTANCE":"low",` +
				`"attachments":[{"contentdata":"YQ==","FILENAME":"a.txt","ContentType":"text/plain","contentTRANSFERencoding":"BASE64","contentid":"a1"}]}`,
			Limits{},
			base(func(e *queue.Email) {
				e.Cc = []queue.Address{{Address: "c@example.com"}}
				e.Bcc = []queue.Address{{Address: "b@example.com"}}
				e.Subject, e.Body, e.IsHTML, e.Importance = "Hi", "x", false, queue.ImportanceLow
				e.Attachments = []queue.Attachment{{FileName: "a.txt", ContentType: "text/plain", ContentID: "a1", Data: []byte("a")}}
			}),
		},
		{
			"To as a JSON array",
			`{"From":"f@example.com","To":["a@example.com","B <b@example.com>; c@example.com"]}`,
			Limits{},
			base(func(e *queue.Email) {
				e.To = []queue.Address{{Address: "a@example.com"}, {Name: "B", Address: "b@example.com"}, {Address: "c@example.com"}}
			}),
		},
		{"CC only", `{"From":"f@example.com","CC":"c@example.com"}`, Limits{}, base(func(e *queue.Email) { e.To, e.Cc = nil, []queue.Address{{Address: "c@example.com"}} })},
		{"Bcc only", `{"From":"f@example.com","Bcc":"b@example.com"}`, Limits{}, base(func(e *queue.Email) { e.To, e.Bcc = nil, []queue.Address{{Address: "b@example.com"}} })},
		{"null fields are absent", `{"From":"f@example.com","To":"t@example.com","CC":null,"Subject":null,"IsHtml":null,"Attachments":null}`, Limits{}, base(nil)},
		{"default From", `{"To":"t@example.com"}`, Limits{DefaultFrom: "Ops <ops@example.com>"}, base(func(e *queue.Email) { e.From = queue.Address{Name: "Ops", Address: "ops@example.com"} })},
		{"blank From takes the default", `{"From":" ","To":"t@example.com"}`, Limits{DefaultFrom: "ops@example.com"}, base(func(e *queue.Email) { e.From = queue.Address{Address: "ops@example.com"} })},
		{"exactly MaxRecipients", `{"From":"f@example.com","To":"a@example.com","CC":"b@example.com"}`, Limits{MaxRecipients: 2}, base(func(e *queue.Email) {
			e.To, e.Cc = []queue.Address{{Address: "a@example.com"}}, []queue.Address{{Address: "b@example.com"}}
		})},
		{"IsHtml absent is HTML", minimal(""), Limits{}, base(nil)},
		{"IsHtml false", minimal(`"IsHtml":false`), Limits{}, base(func(e *queue.Email) { e.IsHTML = false })},
		{"IsHtml string false", minimal(`"IsHtml":"false"`), Limits{}, base(func(e *queue.Email) { e.IsHTML = false })},
		{"IsHtml string FALSE", minimal(`"IsHtml":"FALSE"`), Limits{}, base(func(e *queue.Email) { e.IsHTML = false })},
		{"IsHtml string true", minimal(`"IsHtml":"True"`), Limits{}, base(nil)},
		{"Importance High", minimal(`"Importance":"High"`), Limits{}, base(func(e *queue.Email) { e.Importance = queue.ImportanceHigh })},
		{"Importance HIGH", minimal(`"Importance":"HIGH"`), Limits{}, base(func(e *queue.Email) { e.Importance = queue.ImportanceHigh })},
		{"Importance low", minimal(`"Importance":"low"`), Limits{}, base(func(e *queue.Email) { e.Importance = queue.ImportanceLow })},
		{"Importance Normal", minimal(`"Importance":"Normal"`), Limits{}, base(nil)},
		{"Importance empty", minimal(`"Importance":""`), Limits{}, base(nil)},
		{"Subject and Body kept as given", minimal(`"Subject":"  Re: ünïcode ✓ ","Body":"line 1\r\nline 2\n\ttabbed\n.\n"`), Limits{}, base(func(e *queue.Email) {
			e.Subject, e.Body = "  Re: ünïcode ✓ ", "line 1\r\nline 2\n\ttabbed\n.\n"
		})},
		{"surrogate pair escape", minimal(`"Subject":"smile \ud83d\ude00"`), Limits{}, base(func(e *queue.Email) { e.Subject = "smile 😀" })},
		{"escaped backslash before u is no escape", minimal(`"Subject":"C:\\ud83d"`), Limits{}, base(func(e *queue.Email) { e.Subject = `C:\ud83d` })},
		{"attachment base64 by default", minimal(`"Attachments":[{"ContentData":"` + b64([]byte("hello\x00world")) + `","FileName":"h.bin"}]`), Limits{}, base(func(e *queue.Email) {
			e.Attachments = []queue.Attachment{{FileName: "h.bin", Data: []byte("hello\x00world")}}
		})},
		{"attachment base64 with line breaks", minimal(`"Attachments":[{"ContentData":"aGVs\r\nbG8=\n","FileName":"h.txt"}]`), Limits{}, base(func(e *queue.Email) {
			e.Attachments = []queue.Attachment{{FileName: "h.txt", Data: []byte("hello")}}
		})},
		{"attachment none kept as is", minimal(`"Attachments":[{"ContentData":"not base64 ==\r\n","ContentTransferEncoding":"none","FileName":"n.txt"}]`), Limits{}, base(func(e *queue.Email) {
			e.Attachments = []queue.Attachment{{FileName: "n.txt", Data: []byte("not base64 ==\r\n")}}
		})},
		{"attachment empty data", minimal(`"Attachments":[{"ContentData":"","FileName":"empty.txt"}]`), Limits{}, base(func(e *queue.Email) {
			e.Attachments = []queue.Attachment{{FileName: "empty.txt", Data: []byte{}}}
		})},
		{"ContentType normalised", minimal(`"Attachments":[{"ContentData":"YQ==","FileName":"a.txt","ContentType":"Text/Plain; Charset=\"utf-8\""}]`), Limits{}, base(func(e *queue.Email) {
			e.Attachments = []queue.Attachment{{FileName: "a.txt", ContentType: "text/plain; charset=utf-8", Data: []byte("a")}}
		})},
		{"ContentId in angle brackets", minimal(`"Attachments":[{"ContentData":"YQ==","FileName":"logo.png","ContentId":"<logo@example>"}]`), Limits{}, base(func(e *queue.Email) {
			e.Attachments = []queue.Attachment{{FileName: "logo.png", ContentID: "logo@example", Data: []byte("a")}}
		})},
		{"unicode file name", minimal(`"Attachments":[{"ContentData":"YQ==","FileName":"견적서 (최종).pdf"}]`), Limits{}, base(func(e *queue.Email) {
			e.Attachments = []queue.Attachment{{FileName: "견적서 (최종).pdf", Data: []byte("a")}}
		})},
		{"DeliveryReceipt true", minimal(`"DeliveryReceipt":true`), Limits{}, base(func(e *queue.Email) { e.DeliveryReceipt = true })},
		{"DeliveryReceipt string true", minimal(`"DeliveryReceipt":"true"`), Limits{}, base(func(e *queue.Email) { e.DeliveryReceipt = true })},
		{"DeliveryReceipt false", minimal(`"DeliveryReceipt":false`), Limits{}, base(nil)},
		{"DeliveryReceipt empty string", minimal(`"DeliveryReceipt":""`), Limits{}, base(nil)},
		{"DeliveryReceipt From address", minimal(`"DeliveryReceipt":"F@Example.com"`), Limits{}, base(func(e *queue.Email) { e.DeliveryReceipt = true })},
		{"DeliveryReceipt other address", minimal(`"DeliveryReceipt":"Bounces <dsn@example.com>"`), Limits{}, base(func(e *queue.Email) {
			e.DeliveryReceipt, e.ReturnPath = true, "dsn@example.com"
		})},
		{"ReadReceipt", minimal(`"ReadReceipt":"Reader <r@example.com>"`), Limits{}, base(func(e *queue.Email) { e.ReadReceipt = "r@example.com" })},
		{"ReadReceipt empty", minimal(`"ReadReceipt":""`), Limits{}, base(nil)},
		{"SendAt", minimal(`"SendAt":"2026-03-04T05:06:07Z"`), Limits{}, base(func(e *queue.Email) { e.SendAt = time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC) })},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DecodeRequest([]byte(tt.body), tt.lim)
			if err != nil {
				t.Fatalf("DecodeRequest(%q) error: %v", tt.body, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("DecodeRequest(%q) =\n%+v\nwant\n%+v", tt.body, got, tt.want)
			}
		})
	}
}

func TestDecodeRequestSendAtOffset(t *testing.T) {
	body := minimal(`"SendAt":"2026-03-04T14:06:07+09:00"`)
	e, err := DecodeRequest([]byte(body), Limits{})
	if err != nil {
		t.Fatalf("DecodeRequest(%q) error: %v", body, err)
	}
	if want := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC); !e.SendAt.Equal(want) {
		t.Errorf("DecodeRequest(%q).SendAt = %v; want %v", body, e.SendAt, want)
	}
}

// recipients returns a To list of n distinct addresses.
func recipients(n int) string {
	list := make([]string, n)
	for i := range list {
		list[i] = fmt.Sprintf("r%d@example.com", i)
	}
	return strings.Join(list, ";")
}

// TestDecodeRequestHostile checks that every input the service must not
// send as given is refused with a *FieldError naming the field at fault.
func TestDecodeRequestHostile(t *testing.T) {
	att := func(members string) string { return minimal(`"Attachments":[{` + members + `}]`) }
	tests := []struct {
		name  string
		body  string
		lim   Limits
		field string
	}{
		// Header injection through the subject.
		{"CRLF in Subject", minimal(`"Subject":"Hi\r\nBcc: victim@example.com"`), Limits{}, "Subject"},
		{"LF in Subject", minimal(`"Subject":"Hi\nBcc: victim@example.com"`), Limits{}, "Subject"},
		{"CR in Subject", minimal(`"Subject":"Hi\rthere"`), Limits{}, "Subject"},
		{"NUL in Subject", minimal(`"Subject":"Hi\u0000"`), Limits{}, "Subject"},
		{"tab in Subject", minimal(`"Subject":"Hi\tthere"`), Limits{}, "Subject"},
		{"line separator in Subject", minimal(`"Subject":"Hi\u2028Bcc: x@example.com"`), Limits{}, "Subject"},
		{"NUL in Body", minimal(`"Body":"a\u0000b"`), Limits{}, "Body"},

		// Header and SMTP command injection through addresses.
		{"CRLF in From name", `{"From":"Ann\r\nBcc: x@evil.com <f@example.com>","To":"t@example.com"}`, Limits{}, "From"},
		{"CRLF in To name", `{"From":"f@example.com","To":"Ann\r\nBcc: x@evil.com <t@example.com>"}`, Limits{}, "To"},
		{"LF in CC name", `{"From":"f@example.com","To":"t@example.com","CC":"Ann\n <c@example.com>"}`, Limits{}, "CC"},
		{"CRLF in To address", `{"From":"f@example.com","To":"t@example.com\r\nRCPT TO:<x@evil.com>"}`, Limits{}, "To"},
		{"CR in Bcc address", `{"From":"f@example.com","Bcc":"b@exa\rmple.com"}`, Limits{}, "Bcc"},
		{"NUL in To address", `{"From":"f@example.com","To":"t\u0000@example.com"}`, Limits{}, "To"},
		{"NUL in From address", `{"From":"f@example.com\u0000","To":"t@example.com"}`, Limits{}, "From"},
		{"CRLF in To array item", `{"From":"f@example.com","To":["t@example.com","u@example.com\r\nBcc: x@evil.com"]}`, Limits{}, "To"},
		{"CRLF in ReadReceipt", minimal(`"ReadReceipt":"r@example.com\r\nBcc: x@evil.com"`), Limits{}, "ReadReceipt"},
		{"CRLF in DeliveryReceipt", minimal(`"DeliveryReceipt":"d@example.com\r\nBcc: x@evil.com"`), Limits{}, "DeliveryReceipt"},
		{"encoded CRLF in From name", `{"From":"=?utf-8?q?a=0D=0Abcc=3A_x=40evil.com?= <f@example.com>","To":"t@example.com"}`, Limits{}, "From"},
		{"encoded CRLF in To name", `{"From":"f@example.com","To":"=?utf-8?q?a=0D=0Abcc:x@y?= <a@b.com>"}`, Limits{}, "To"},
		{"encoded CRLF in CC name (base64)", `{"From":"f@example.com","To":"t@example.com","CC":"=?utf-8?b?` + base64.StdEncoding.EncodeToString([]byte("a\r\nBcc: x@evil.com")) + `?= <c@example.com>"}`, Limits{}, "CC"},
		{"C1 control in Subject", minimal(`"Subject":"Hi\u009b2J"`), Limits{}, "Subject"},
		{"backslash in non-ASCII From name", `{"From":"\"J\u00fcrgen \\\\ Admin\" <f@example.com>","To":"t@example.com"}`, Limits{}, "From"},
		{"encoded NUL in Bcc name", `{"From":"f@example.com","Bcc":"=?utf-8?q?a=00b?= <b@example.com>"}`, Limits{}, "Bcc"},
		{"quoted local part with >", `{"From":"f@example.com","To":"\"a>b\"@example.com"}`, Limits{}, "To"},
		{"quoted local part with space", `{"From":"f@example.com","To":"\"a b\"@example.com"}`, Limits{}, "To"},
		{"quoted local part hiding an address", `{"From":"f@example.com","To":"\"<x@evil.com>\"@example.com"}`, Limits{}, "To"},
		{"quoted local part in From", `{"From":"\"a>b\"@example.com","To":"t@example.com"}`, Limits{}, "From"},
		{"route address", `{"From":"f@example.com","To":"<@relay.example.com:t@example.com>"}`, Limits{}, "To"},
		{"address literal", `{"From":"f@example.com","To":"t@[127.0.0.1]"}`, Limits{}, "To"},
		{"not an address", `{"From":"f@example.com","To":"t@example.com;nobody"}`, Limits{}, "To"},
		{"two From addresses", `{"From":"a@example.com;b@example.com","To":"t@example.com"}`, Limits{}, "From"},
		{"ReadReceipt not an address", minimal(`"ReadReceipt":"yes"`), Limits{}, "ReadReceipt"},

		// Recipient limits and missing recipients.
		{"no recipients", `{"From":"f@example.com"}`, Limits{}, "To"},
		{"only separators", `{"From":"f@example.com","To":" ; ; "}`, Limits{}, "To"},
		{"no From and no default", `{"To":"t@example.com"}`, Limits{}, "From"},
		{"101 recipients over the default limit", `{"From":"f@example.com","To":"` + recipients(101) + `"}`, Limits{}, "To"},
		{"over a custom limit across To, CC and Bcc", `{"From":"f@example.com","To":"a@example.com","CC":"b@example.com","Bcc":"c@example.com"}`, Limits{MaxRecipients: 2}, "To"},

		// Invalid UTF-8 and unpaired surrogates, which encoding/json would
		// silently turn into U+FFFD.
		{"invalid UTF-8 in Subject", minimal(`"Subject":"caf` + "\xe9" + `"`), Limits{}, "Subject"},
		{"invalid UTF-8 in Body", minimal(`"Body":"` + "\xff\xfe" + `"`), Limits{}, "Body"},
		{"invalid UTF-8 in To", `{"From":"f@example.com","To":"t` + "\xc3" + `@example.com"}`, Limits{}, "To"},
		{"invalid UTF-8 in To array", `{"From":"f@example.com","To":["t` + "\xc3" + `@example.com"]}`, Limits{}, "To"},
		{"invalid UTF-8 in FileName", att(`"ContentData":"YQ==","FileName":"a` + "\x80" + `.txt"`), Limits{}, "Attachments"},
		{"invalid UTF-8 in a key", minimal(`"Subj` + "\xff" + `ect":"x"`), Limits{}, "Subj\ufffdect"},
		{"lone high surrogate in Subject", minimal(`"Subject":"smile \ud83d"`), Limits{}, "Subject"},
		{"lone low surrogate in Body", minimal(`"Body":"\ude00"`), Limits{}, "Body"},
		{"reversed surrogates in Subject", minimal(`"Subject":"\ude00\ud83d"`), Limits{}, "Subject"},

		// Attachments.
		{"invalid base64", att(`"ContentData":"not base64!","FileName":"a.txt"`), Limits{}, "Attachments[0].ContentData"},
		{"truncated base64", att(`"ContentData":"YQ=","FileName":"a.txt"`), Limits{}, "Attachments[0].ContentData"},
		{"invalid base64 in second", minimal(`"Attachments":[{"ContentData":"YQ==","FileName":"a.txt"},{"ContentData":"%%%","FileName":"b.txt"}]`), Limits{}, "Attachments[1].ContentData"},
		{"missing ContentData", att(`"FileName":"a.txt"`), Limits{}, "Attachments[0].ContentData"},
		{"unknown transfer encoding", att(`"ContentData":"YQ==","ContentTransferEncoding":"quoted-printable","FileName":"a.txt"`), Limits{}, "Attachments[0].ContentTransferEncoding"},
		{"missing FileName", att(`"ContentData":"YQ=="`), Limits{}, "Attachments[0].FileName"},
		{"FileName ../x", att(`"ContentData":"YQ==","FileName":"../x"`), Limits{}, "Attachments[0].FileName"},
		{"FileName a/b", att(`"ContentData":"YQ==","FileName":"a/b"`), Limits{}, "Attachments[0].FileName"},
		{"FileName ..", att(`"ContentData":"YQ==","FileName":".."`), Limits{}, "Attachments[0].FileName"},
		{"FileName .", att(`"ContentData":"YQ==","FileName":"."`), Limits{}, "Attachments[0].FileName"},
		{"FileName backslash", att(`"ContentData":"YQ==","FileName":"..\\x"`), Limits{}, "Attachments[0].FileName"},
		{"FileName absolute", att(`"ContentData":"YQ==","FileName":"/etc/passwd"`), Limits{}, "Attachments[0].FileName"},
		{"FileName CRLF", att(`"ContentData":"YQ==","FileName":"a.txt\r\nContent-Type: text/html"`), Limits{}, "Attachments[0].FileName"},
		{"FileName LF", att(`"ContentData":"YQ==","FileName":"a\n.txt"`), Limits{}, "Attachments[0].FileName"},
		{"FileName NUL", att(`"ContentData":"YQ==","FileName":"a.txt\u0000.exe"`), Limits{}, "Attachments[0].FileName"},
		// go-mail would write these as '_': the recipient would see
		// another name than the one sent.
		{"FileName quote", att(`"ContentData":"YQ==","FileName":"a\".txt"`), Limits{}, "Attachments[0].FileName"},
		{"FileName colon", att(`"ContentData":"YQ==","FileName":"report:v1.txt"`), Limits{}, "Attachments[0].FileName"},
		{"FileName question mark", att(`"ContentData":"YQ==","FileName":"why?.txt"`), Limits{}, "Attachments[0].FileName"},
		{"FileName angle bracket", att(`"ContentData":"YQ==","FileName":"<a>.txt"`), Limits{}, "Attachments[0].FileName"},
		{"FileName pipe", att(`"ContentData":"YQ==","FileName":"a|b.txt"`), Limits{}, "Attachments[0].FileName"},
		{"FileName too long", att(`"ContentData":"YQ==","FileName":"` + strings.Repeat("a", 256) + `"`), Limits{}, "Attachments[0].FileName"},
		{"ContentType CRLF", att(`"ContentData":"YQ==","FileName":"a.txt","ContentType":"text/plain\r\nBcc: x@evil.com"`), Limits{}, "Attachments[0].ContentType"},
		{"ContentType not a media type", att(`"ContentData":"YQ==","FileName":"a.txt","ContentType":"pdf"`), Limits{}, "Attachments[0].ContentType"},
		{"ContentId with >", att(`"ContentData":"YQ==","FileName":"a.png","ContentId":"a>b"`), Limits{}, "Attachments[0].ContentId"},
		{"ContentId with space", att(`"ContentData":"YQ==","FileName":"a.png","ContentId":"a b"`), Limits{}, "Attachments[0].ContentId"},
		{"ContentId CRLF", att(`"ContentData":"YQ==","FileName":"a.png","ContentId":"a\r\nBcc: x@evil.com"`), Limits{}, "Attachments[0].ContentId"},

		// Unknown and duplicate fields.
		{"unknown field", minimal(`"Sender":"x@example.com"`), Limits{}, "Sender"},
		{"unknown attachment field", att(`"ContentData":"YQ==","FileName":"a.txt","Name":"b.txt"`), Limits{}, "Attachments[0].Name"},
		{"duplicate differing in case", minimal(`"Subject":"a","subject":"b"`), Limits{}, "subject"},
		{"duplicate To differing in case", `{"From":"f@example.com","To":"t@example.com","to":"x@example.com"}`, Limits{}, "to"},
		{"exact duplicate field", minimal(`"Subject":"a","Subject":"b"`), Limits{}, "Subject"},
		{"exact duplicate To", `{"From":"f@example.com","To":"t@example.com","To":"x@example.com"}`, Limits{}, "To"},
		{"duplicate attachment field", att(`"ContentData":"YQ==","FileName":"a.txt","filename":"b.txt"`), Limits{}, "Attachments[0].filename"},

		// Wrong types.
		{"To as number", `{"From":"f@example.com","To":42}`, Limits{}, "To"},
		{"To as object", `{"From":"f@example.com","To":{"a":"t@example.com"}}`, Limits{}, "To"},
		{"To array of numbers", `{"From":"f@example.com","To":[1,2]}`, Limits{}, "To"},
		{"From as array", `{"From":["f@example.com"],"To":"t@example.com"}`, Limits{}, "From"},
		{"Subject as number", minimal(`"Subject":1`), Limits{}, "Subject"},
		{"Body as object", minimal(`"Body":{}`), Limits{}, "Body"},
		{"IsHtml as word", minimal(`"IsHtml":"yes"`), Limits{}, "IsHtml"},
		{"IsHtml as number", minimal(`"IsHtml":1`), Limits{}, "IsHtml"},
		{"invalid Importance", minimal(`"Importance":"Urgent"`), Limits{}, "Importance"},
		{"Importance as number", minimal(`"Importance":1`), Limits{}, "Importance"},
		{"DeliveryReceipt as number", minimal(`"DeliveryReceipt":1`), Limits{}, "DeliveryReceipt"},
		{"SendAt not RFC 3339", minimal(`"SendAt":"tomorrow"`), Limits{}, "SendAt"},
		{"SendAt as number", minimal(`"SendAt":1767225600`), Limits{}, "SendAt"},
		{"Attachments as object", minimal(`"Attachments":{"ContentData":"YQ==","FileName":"a.txt"}`), Limits{}, "Attachments"},
		{"Attachments as string", minimal(`"Attachments":"a.txt"`), Limits{}, "Attachments"},
		{"attachment as string", minimal(`"Attachments":["a.txt"]`), Limits{}, "Attachments[0]"},
		{"ContentData as number", att(`"ContentData":1,"FileName":"a.txt"`), Limits{}, "Attachments[0].ContentData"},
		{"FileName as bool", att(`"ContentData":"YQ==","FileName":true`), Limits{}, "Attachments[0].FileName"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := DecodeRequest([]byte(tt.body), tt.lim)
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("DecodeRequest(%q) = %+v, %v; want a *FieldError for %s", tt.body, e, err, tt.field)
			}
			if fe.Field != tt.field {
				t.Errorf("DecodeRequest(%q) error field = %q (%v); want %q", tt.body, fe.Field, fe, tt.field)
			}
			if fe.Code == "" || fe.Message == "" {
				t.Errorf("DecodeRequest(%q) = %#v; want a code and a message", tt.body, fe)
			}
			if e != nil {
				t.Errorf("DecodeRequest(%q) returned an email with its error: %+v", tt.body, e)
			}
		})
	}
}

// TestDecodeRequestNotAnObject checks bodies that are no JSON object at all:
// the body itself is at fault, so the error names no field.
func TestDecodeRequestNotAnObject(t *testing.T) {
	for _, body := range []string{
		"", "   ", "null", "42", `"From"`, `[]`, `[{"From":"f@example.com","To":"t@example.com"}]`, "true",
		`{"From":"f@example.com","To":"t@example.com"`,                       // truncated
		`{"From":"f@example.com","To":"t@example.com"} {"Bcc":"x@evil.com"}`, // trailing data
		`{"From":"f@example.com","To":"t@example.com",}`,                     // trailing comma
		"\xff{}",
	} {
		e, err := DecodeRequest([]byte(body), Limits{})
		var fe *FieldError
		if !errors.As(err, &fe) {
			t.Errorf("DecodeRequest(%q) = %+v, %v; want a *FieldError", body, e, err)
			continue
		}
		if fe.Field != "" || fe.Code != "invalid_json" {
			t.Errorf("DecodeRequest(%q) error = %#v; want Field \"\" and Code invalid_json", body, fe)
		}
	}
}

// TestDecodeRequestRecipientLimitCountsMailboxes documents that the limit is
// on distinct envelope recipients: an address listed twice is sent once.
func TestDecodeRequestRecipientLimitCountsMailboxes(t *testing.T) {
	body := `{"From":"f@example.com","To":"a@example.com;a@example.com","Bcc":"a@example.com"}`
	e, err := DecodeRequest([]byte(body), Limits{MaxRecipients: 1})
	if err != nil {
		t.Fatalf("DecodeRequest(%q) error: %v", body, err)
	}
	if got := e.Recipients(); len(got) != 1 {
		t.Errorf("DecodeRequest(%q).Recipients() = %q; want one", body, got)
	}
}

func TestLongHeaderWordsAreRefused(t *testing.T) {
	long := strings.Repeat("x", 901)
	for _, tt := range []struct{ body, field string }{
		{`{"From":"a@example.com","To":"b@example.com","Subject":"` + long + `"}`, "Subject"},
		{`{"From":"` + long + ` <a@example.com>","To":"b@example.com"}`, "From"},
		{`{"From":"a@example.com","To":"` + long + ` <b@example.com>"}`, "To"},
	} {
		_, err := DecodeRequest([]byte(tt.body), Limits{})
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != tt.field {
			t.Errorf("901-character word in %s: err = %v; want a FieldError for %s", tt.field, err, tt.field)
		}
	}
	ok := `{"From":"a@example.com","To":"b@example.com","Subject":"` + strings.Repeat("word ", 400) + `"}`
	if _, err := DecodeRequest([]byte(ok), Limits{}); err != nil {
		t.Errorf("a 2000-character subject of short words: %v; want accepted (it folds)", err)
	}
}

func TestNullContentDataIsMissing(t *testing.T) {
	_, err := DecodeRequest([]byte(`{"From":"a@example.com","To":"b@example.com","Attachments":[{"ContentData":null,"FileName":"a.txt"}]}`), Limits{})
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != "Attachments[0].ContentData" || fe.Code != "missing_field" {
		t.Errorf("ContentData null: %v; want missing_field for Attachments[0].ContentData", err)
	}
}
