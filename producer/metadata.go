package producer

import (
	"bytes"
	"encoding/json"
	"unicode/utf8"
)

// Metadata limits: the caller's own string pairs, echoed in the status body
// and in every event, bounded so that they stay small beside the email.
const (
	MaxMetadataPairs = 10
	MaxMetadataKey   = 40  // characters
	MaxMetadataValue = 500 // characters
)

// decodeMetadata reads the Metadata member: an object of at most
// MaxMetadataPairs string values. Errors name Metadata, or Metadata.<key>
// for one pair; keys are case-sensitive and may not repeat. decodeObject
// has already checked that raw is valid JSON and UTF-8.
func decodeMetadata(raw json.RawMessage) (map[string]string, error) {
	if isNull(raw) {
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, fieldErr("Metadata", "must be an object of string values, such as {\"order_id\": \"1234\"}")
	}
	m := make(map[string]string)
	for dec.More() {
		tok, err := dec.Token()
		key, ok := tok.(string)
		if err != nil || !ok {
			return nil, fieldErr("Metadata", "must be an object of string values")
		}
		field := "Metadata." + key
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, fieldErr(field, "is not valid JSON")
		}
		s, ok := stringValue(v)
		if !ok && (len(v) == 0 || v[0] != '"' || json.Unmarshal(v, &s) != nil) {
			return nil, fieldErr(field, "must be a string")
		}
		if _, dup := m[key]; dup {
			return nil, &FieldError{Field: field, Code: "duplicate_field", Message: "this Metadata key is given twice"}
		}
		if len(m) == MaxMetadataPairs {
			return nil, fieldErr("Metadata", "has more than %d pairs", MaxMetadataPairs)
		}
		switch n := utf8.RuneCountInString(key); {
		case n == 0:
			return nil, fieldErr(field, "a Metadata key must not be empty")
		case n > MaxMetadataKey:
			return nil, fieldErr(field, "a Metadata key has at most %d characters, this one %d", MaxMetadataKey, n)
		case hasControl(key):
			return nil, fieldErr(field, "a Metadata key must not contain control characters")
		}
		if n := utf8.RuneCountInString(s); n > MaxMetadataValue {
			return nil, fieldErr(field, "a Metadata value has at most %d characters, this one %d", MaxMetadataValue, n)
		}
		m[key] = s
	}
	if len(m) == 0 {
		return nil, nil
	}
	return m, nil
}
