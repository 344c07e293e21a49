package apitest

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi2"
	"github.com/getkin/kin-openapi/openapi2conv"
	"github.com/getkin/kin-openapi/openapi3"

	"github.com/sendq/sendq/producer"
)

// LoadSwagger decodes an OpenAPI 2.0 (Swagger) document and checks it with
// kin-openapi: the document must say swagger "2.0" and have an info title
// and version and at least one path; every member must be one the 2.0
// specification defines or an x- extension (kin-openapi's openapi2 keeps
// any other member as an extension, which is how a misspelt or misplaced
// one is found); and the document, converted to OpenAPI 3 by
// openapi2conv with every $ref resolved, must pass openapi3's validation
// (types, formats, enums against their types, defaults, path parameters
// declared and required, unique operation ids, security schemes).
// It returns both forms.
func LoadSwagger(spec []byte) (*openapi2.T, *openapi3.T, error) {
	var doc2 openapi2.T
	if err := json.Unmarshal(spec, &doc2); err != nil {
		return nil, nil, fmt.Errorf("decode: %w", err)
	}
	var errs []error
	if doc2.Swagger != "2.0" {
		errs = append(errs, fmt.Errorf("swagger is %q; want \"2.0\"", doc2.Swagger))
	}
	if doc2.Info.Title == "" || doc2.Info.Version == "" {
		errs = append(errs, errors.New("info needs a title and a version"))
	}
	if len(doc2.Paths) == 0 {
		errs = append(errs, errors.New("no paths"))
	}
	for _, p := range unknownMembers(reflect.ValueOf(&doc2), "#") {
		errs = append(errs, fmt.Errorf("%s is not an OpenAPI 2.0 member nor an x- extension", p))
	}
	errs = append(errs, parameterErrors(&doc2)...)
	if len(errs) > 0 {
		return nil, nil, errors.Join(errs...)
	}
	doc3, err := openapi2conv.ToV3(&doc2)
	if err != nil {
		return nil, nil, fmt.Errorf("convert to OpenAPI 3: %w", err)
	}
	if err := doc3.Validate(openapi3.NewLoader().Context); err != nil {
		return nil, nil, fmt.Errorf("validate: %w", err)
	}
	return &doc2, doc3, nil
}

// parameterErrors checks what the conversion to OpenAPI 3 forgives about
// 2.0 parameters: where they may be ("in"), that a path parameter is
// required, that a body parameter has a schema and any other a type, and
// that an operation has at most one body and not both body and formData.
func parameterErrors(doc *openapi2.T) []error {
	var errs []error
	paths := make([]string, 0, len(doc.Paths))
	for p := range doc.Paths {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, path := range paths {
		item := doc.Paths[path]
		for method, op := range item.Operations() {
			where := method + " " + path
			bodies, forms := 0, 0
			for _, p := range append(slicesClone(item.Parameters), op.Parameters...) {
				if p == nil {
					continue
				}
				if p.Ref != "" {
					name := strings.TrimPrefix(p.Ref, "#/parameters/")
					if p = doc.Parameters[name]; p == nil {
						errs = append(errs, fmt.Errorf("%s: parameter $ref %q names nothing in #/parameters", where, name))
						continue
					}
				}
				switch p.In {
				case "body":
					bodies++
					if p.Schema == nil {
						errs = append(errs, fmt.Errorf("%s: body parameter %q has no schema", where, p.Name))
					}
				case "formData", "query", "header", "path":
					if p.In == "formData" {
						forms++
					}
					if p.Type == nil {
						errs = append(errs, fmt.Errorf("%s: %s parameter %q has no type", where, p.In, p.Name))
					}
					if p.In == "path" && !p.Required {
						errs = append(errs, fmt.Errorf("%s: path parameter %q must be required", where, p.Name))
					}
				default:
					errs = append(errs, fmt.Errorf("%s: parameter %q is in %q; OpenAPI 2.0 has body, formData, query, header and path", where, p.Name, p.In))
				}
			}
			if bodies > 1 || bodies > 0 && forms > 0 {
				errs = append(errs, fmt.Errorf("%s: %d body and %d formData parameters; want at most one body, and not both", where, bodies, forms))
			}
		}
	}
	return errs
}

func slicesClone(p openapi2.Parameters) openapi2.Parameters {
	return append(openapi2.Parameters(nil), p...)
}

// unknownMembers walks v and returns the path of every Extensions entry
// whose name does not start with "x-".
func unknownMembers(v reflect.Value, path string) []string {
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if v.IsNil() {
			return nil
		}
		return unknownMembers(v.Elem(), path)
	case reflect.Struct:
		var out []string
		for i := range v.NumField() {
			f := v.Type().Field(i)
			fv := v.Field(i)
			if f.Name == "Extensions" && fv.Kind() == reflect.Map {
				for _, k := range fv.MapKeys() {
					if name := k.String(); !strings.HasPrefix(name, "x-") {
						out = append(out, path+"/"+name)
					}
				}
				continue
			}
			if f.Name == "extra" && fv.Kind() == reflect.Slice {
				// openapi2.SchemaRef: the members beside a $ref, which
				// JSON Reference ignores; only extensions make sense there.
				for j := range fv.Len() {
					if name := fv.Index(j).String(); !strings.HasPrefix(name, "x-") {
						out = append(out, path+"/"+name+" (beside $ref)")
					}
				}
				continue
			}
			if !f.IsExported() {
				// openapi2.Responses keeps its entries unexported; reach
				// them through its Map method below.
				continue
			}
			out = append(out, unknownMembers(fv, path+"/"+jsonName(f))...)
		}
		if v.CanAddr() {
			if m := v.Addr().MethodByName("Map"); m.IsValid() && m.Type().NumIn() == 0 && m.Type().NumOut() == 1 {
				out = append(out, unknownMembers(m.Call(nil)[0], path)...)
			}
		}
		return out
	case reflect.Map:
		var out []string
		keys := v.MapKeys()
		sort.Slice(keys, func(i, j int) bool { return fmt.Sprint(keys[i]) < fmt.Sprint(keys[j]) })
		for _, k := range keys {
			out = append(out, unknownMembers(v.MapIndex(k), path+"/"+fmt.Sprint(k))...)
		}
		return out
	case reflect.Slice, reflect.Array:
		var out []string
		for i := range v.Len() {
			out = append(out, unknownMembers(v.Index(i), fmt.Sprintf("%s/%d", path, i))...)
		}
		return out
	}
	return nil
}

func jsonName(f reflect.StructField) string {
	if name, _, _ := strings.Cut(f.Tag.Get("json"), ","); name != "" && name != "-" {
		return name
	}
	return f.Name
}

// NewConnectorValidator returns a Validator of a custom connector
// definition such as deploy.LogicAppsDefinition (OpenAPI 2.0, loaded with
// LoadSwagger and converted to OpenAPI 3). A request to the connector's
// operations under a connection segment (/{connectionId}/SendEmailV3) is
// checked as the server serves it: as /SendEmailV3.
func NewConnectorValidator(t testing.TB, spec []byte) *Validator {
	t.Helper()
	_, doc3, err := LoadSwagger(spec)
	if err != nil {
		t.Fatalf("connector definition: %v", err)
	}
	v, err := newValidatorDoc(doc3)
	if err != nil {
		t.Fatalf("connector definition: %v", err)
	}
	v.mapPath = servedPath
	return v
}

// servedPath is the path the server serves r as (producer.ConnectorPaths).
func servedPath(r *http.Request) string {
	path := r.URL.Path
	producer.ConnectorPaths(http.HandlerFunc(func(_ http.ResponseWriter, r2 *http.Request) {
		path = r2.URL.Path
	})).ServeHTTP(nil, r)
	return path
}
