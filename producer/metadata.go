package producer

import (
	"maps"
	"slices"
	"unicode/utf8"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
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
// for one pair; keys are case-sensitive. The request's decoder has already
// refused invalid JSON, invalid UTF-8 and a key given twice.
func decodeMetadata(raw jsontext.Value) (map[string]string, error) {
	if len(raw) == 0 || raw.Kind() == 'n' {
		return nil, nil
	}
	if raw.Kind() != '{' {
		return nil, fieldErr("Metadata", "must be an object of string values, such as {\"order_id\": \"1234\"}")
	}
	var pairs map[string]jsontext.Value
	if err := json.Unmarshal(raw, &pairs); err != nil {
		return nil, fieldErr("Metadata", "must be an object of string values")
	}
	if len(pairs) > MaxMetadataPairs {
		return nil, fieldErr("Metadata", "has more than %d pairs", MaxMetadataPairs)
	}
	m := make(map[string]string, len(pairs))
	for _, key := range slices.Sorted(maps.Keys(pairs)) {
		field := "Metadata." + key
		v := pairs[key]
		var s string
		if v.Kind() != '"' || json.Unmarshal(v, &s) != nil {
			return nil, fieldErr(field, "must be a string")
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
