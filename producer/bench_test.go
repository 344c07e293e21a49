package producer_test

import (
	"strings"
	"testing"

	"github.com/sendq/sendq/producer"
)

// benchRequestBody is the connector's example with a 1 KB HTML body and a
// small attachment: what DecodeRequest sees on every POST /v1/emails.
var benchRequestBody = []byte(`{
  "From": "Sales Bot <sales-bot@contoso.example>",
  "To": "recipient1@contoso.example;recipient2@contoso.example",
  "CC": "owner@contoso.example",
  "Subject": "새 잠재 고객 생성됨",
  "Body": "<p>` + strings.Repeat("A new lead was created in Salesforce. ", 27) + `</p>",
  "IsHtml": true,
  "Importance": "High",
  "Attachments": [{"ContentData": "aGVsbG8gd29ybGQ=", "ContentType": "text/plain", "FileName": "hello.txt"}]
}`)

// BenchmarkDecodeRequest measures decoding and validating one request
// body: the intake's CPU work per email before Redis.
func BenchmarkDecodeRequest(b *testing.B) {
	b.ReportAllocs()
	b.SetBytes(int64(len(benchRequestBody)))
	for b.Loop() {
		if _, err := producer.DecodeRequest(benchRequestBody, producer.Limits{}); err != nil {
			b.Fatal(err)
		}
	}
}
