package templates

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"

	"github.com/go-json-experiment/json/jsontext"
)

// DecodeData reads TemplateData, a JSON object, as templates see it:
// objects as map[string]any, arrays as []any, strings, booleans, an
// integer as int64 when it fits (so that {{.OrderNo}} is 12345678, not
// 1.2345678e+07), any other number as float64. A null member is left
// out: to a template it is missing, never an empty string; a null in an
// array is an error. Raw null or empty is nil.
func DecodeData(raw jsontext.Value) (map[string]any, error) {
	if len(raw) == 0 {
		return nil, nil
	}
	dec := jsontext.NewDecoder(bytes.NewReader(raw))
	if dec.PeekKind() == 'n' {
		return nil, nil
	}
	if dec.PeekKind() != '{' {
		return nil, errors.New("must be a JSON object")
	}
	v, err := readValue(dec, 0)
	if err != nil {
		return nil, err
	}
	return v.(map[string]any), nil
}

// maxDepth bounds nesting (jsontext itself allows 10,000 levels).
const maxDepth = 64

func readValue(dec *jsontext.Decoder, depth int) (any, error) {
	if depth > maxDepth {
		return nil, fmt.Errorf("nests deeper than %d levels", maxDepth)
	}
	tok, err := dec.ReadToken()
	if err != nil {
		return nil, err
	}
	switch tok.Kind() {
	case 'n':
		return nil, nil
	case 't', 'f':
		return tok.Bool(), nil
	case '"':
		return tok.String(), nil
	case '0':
		s := tok.String()
		if i, err := strconv.ParseInt(s, 10, 64); err == nil {
			return i, nil
		}
		f, err := tok.Float()
		if err != nil {
			return nil, fmt.Errorf("number %s is out of range", s)
		}
		return f, nil
	case '{':
		m := map[string]any{}
		for dec.PeekKind() != '}' {
			k, err := dec.ReadToken()
			if err != nil {
				return nil, err
			}
			name := k.String()
			v, err := readValue(dec, depth+1)
			if err != nil {
				return nil, err
			}
			if v != nil {
				m[name] = v
			}
		}
		_, err := dec.ReadToken()
		return m, err
	case '[':
		a := []any{}
		for dec.PeekKind() != ']' {
			v, err := readValue(dec, depth+1)
			if err != nil {
				return nil, err
			}
			if v == nil {
				// A member can be left out; an element cannot, and a
				// template would print it as nothing.
				return nil, errors.New("an array must not hold null")
			}
			a = append(a, v)
		}
		_, err := dec.ReadToken()
		return a, err
	}
	return nil, fmt.Errorf("unexpected %v", tok.Kind())
}
