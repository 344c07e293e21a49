package producer

import (
	"testing"
)

// Every member of Defaults reaches a message that lacks it, and a
// message's own member replaces it whole.
func TestDecodeBatchMergesFieldByField(t *testing.T) {
	body := `{"defaults": {"From": "Acme <a@acme.example>", "Subject": "S", "Body": "B", "IsHtml": false,
	  "Importance": "High", "Priority": "normal", "Metadata": {"order": "1"}, "ListUnsubscribe": true,
	  "ReadReceipt": "r@acme.example", "Attachments": [{"ContentData": "YQ==", "FileName": "a.txt"}]},
	 "MESSAGES": [{"To": "x@example.com"},
	  {"to": "y@example.com", "SUBJECT": "Own", "Attachments": [{"ContentData": "Yg==", "FileName": "b.txt"}, {"ContentData": "Yw==", "FileName": "c.txt"}],
	   "Priority": "high", "Metadata": {"order": "2"}, "IsHtml": true}]}`
	emails, results, err := DecodeBatch([]byte(body), Limits{}, 10)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range results {
		if r.Error != nil {
			t.Fatalf("message %d: %+v", i, r.Error)
		}
	}
	a, b := emails[0], emails[1]
	if a.From.Address != "a@acme.example" || a.Subject != "S" || a.Body != "B" || a.IsHTML || a.Priority != "normal" ||
		a.Metadata["order"] != "1" || !a.ListUnsubscribe || a.ReadReceipt != "r@acme.example" ||
		len(a.Attachments) != 1 || a.Attachments[0].FileName != "a.txt" {
		t.Errorf("message 0 = %+v; want every default", a)
	}
	if b.Subject != "Own" || b.Body != "B" || !b.IsHTML || b.Priority != "high" || b.Metadata["order"] != "2" ||
		len(b.Attachments) != 2 || b.Attachments[0].FileName != "b.txt" || b.To[0].Address != "y@example.com" {
		t.Errorf("message 1 = %+v; want its own members over the defaults", b)
	}
}
