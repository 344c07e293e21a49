package deploy_test

import (
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"

	"github.com/sendq/sendq/deploy"
	"github.com/sendq/sendq/internal/apitest"
	"github.com/sendq/sendq/producer"
)

func TestLogicAppsDefinitionIsOpenAPI2(t *testing.T) {
	t.Parallel()
	if _, _, err := apitest.LoadSwagger(deploy.LogicAppsDefinition); err != nil {
		t.Fatalf("apiDefinition.swagger.json is not valid OpenAPI 2.0: %v", err)
	}

	// The check itself: each of these mistakes must be caught.
	for _, tc := range []struct {
		name   string
		mutate func(doc map[string]any)
	}{
		{"another version", func(d map[string]any) { d["swagger"] = "3.0" }},
		{"no title", func(d map[string]any) { delete(obj(d, "info"), "title") }},
		{"an OpenAPI 3 member", func(d map[string]any) { d["servers"] = []any{map[string]any{"url": "https://x"}} }},
		{"a misspelt member", func(d map[string]any) {
			op := obj(d, "paths", "/SendEmailV3", "post")
			op["operationID"] = op["operationId"]
			delete(op, "operationId")
		}},
		{"a member beside $ref", func(d map[string]any) {
			obj(d, "definitions", "EmailV3", "properties", "Attachments", "items")["description"] = "x"
		}},
		{"a $ref to nothing", func(d map[string]any) {
			obj(d, "definitions", "EmailV3", "properties", "Attachments", "items")["$ref"] = "#/definitions/Nope"
		}},
		{"an optional path parameter", func(d map[string]any) {
			obj(d, "paths", "/v1/emails/{id}", "get", "parameters", "0")["required"] = false
		}},
		{"an undeclared path parameter", func(d map[string]any) {
			obj(d, "paths", "/v1/emails/{id}", "get")["parameters"] = []any{}
		}},
		{"two operations with one id", func(d map[string]any) {
			obj(d, "paths", "/v1/emails/{id}", "delete")["operationId"] = "GetEmailStatus"
		}},
		{"a default its schema refuses", func(d map[string]any) {
			obj(d, "definitions", "EmailV3", "properties", "Importance")["default"] = 7
		}},
		{"a type that does not exist", func(d map[string]any) {
			obj(d, "definitions", "EmailV3", "properties", "To")["type"] = "text"
		}},
		{"a parameter location 2.0 lacks", func(d map[string]any) {
			obj(d, "paths", "/SendEmailV3", "post", "parameters", "1")["in"] = "cookie"
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var doc map[string]any
			if err := json.Unmarshal(deploy.LogicAppsDefinition, &doc); err != nil {
				t.Fatal(err)
			}
			tc.mutate(doc)
			b, err := json.Marshal(doc)
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err := apitest.LoadSwagger(b); err == nil {
				t.Errorf("LoadSwagger accepted the definition with %s; want an error", tc.name)
			}
		})
	}
}

// obj walks doc along keys (object members, or decimal indexes into
// arrays) and returns the object there.
func obj(doc map[string]any, keys ...string) map[string]any {
	var v any = doc
	for _, k := range keys {
		v = get(v, k)
	}
	m, _ := v.(map[string]any)
	if m == nil {
		panic("no object at " + strings.Join(keys, "/"))
	}
	return m
}

// connectorProperty is one property of the connector's own body schemas:
// its name, type and format (where the connector gives one that custom
// connectors take), and its display name and visibility.
type connectorProperty struct {
	name, typ, format, summary, visibility string
}

// The connector's EmailV3 and AttachmentV2 (Send Email (V3)), from its
// documentation. Formats: Body is html, ContentData byte. The connector's
// addresses are format email, which the custom connector tooling does not
// take (its schema of connector definitions allows no email format), so
// here they are strings without a format.
var (
	connectorEmailV3 = []connectorProperty{
		{"From", "string", "", "From", ""},
		{"To", "string", "", "To", "important"},
		{"CC", "string", "", "CC", "advanced"},
		{"Subject", "string", "", "Subject", "important"},
		{"Body", "string", "html", "Body", "important"},
		{"Importance", "string", "", "Importance", "advanced"},
		{"ReadReceipt", "string", "", "Read Receipt", "advanced"},
		{"DeliveryReceipt", "string", "", "Delivery Receipt", "advanced"},
		{"Bcc", "string", "", "Bcc", "advanced"},
		{"Attachments", "array", "", "Attachments", "advanced"},
	}
	connectorAttachmentV2 = []connectorProperty{
		{"FileName", "string", "", "Name", ""},
		{"ContentId", "string", "", "Content Id", ""},
		{"ContentData", "string", "byte", "Content", ""},
		{"ContentType", "string", "", "Content Type", ""},
	}
)

func TestLogicAppsDefinitionHasTheConnectorsFields(t *testing.T) {
	t.Parallel()
	_, doc3, err := apitest.LoadSwagger(deploy.LogicAppsDefinition)
	if err != nil {
		t.Fatal(err)
	}
	schema := func(name string) *openapi3.Schema {
		t.Helper()
		s := doc3.Components.Schemas[name]
		if s == nil || s.Value == nil {
			t.Fatalf("definitions has no %s", name)
		}
		return s.Value
	}
	check := func(def string, want []connectorProperty) {
		t.Helper()
		s := schema(def)
		for _, p := range want {
			ref := s.Properties[p.name]
			if ref == nil || ref.Value == nil {
				t.Errorf("%s has no property %s", def, p.name)
				continue
			}
			got := ref.Value
			if !got.Type.Is(p.typ) || got.Format != p.format {
				t.Errorf("%s.%s is %v format %q; want %s format %q (as the connector's)", def, p.name, got.Type, got.Format, p.typ, p.format)
			}
			if ext := ref.Value.Extensions; ext["x-ms-summary"] != p.summary || str(ext["x-ms-visibility"]) != p.visibility {
				t.Errorf("%s.%s has x-ms-summary %v x-ms-visibility %v; want %q and %q", def, p.name, ext["x-ms-summary"], ext["x-ms-visibility"], p.summary, p.visibility)
			}
		}
		if len(s.Properties) != len(want) {
			t.Errorf("%s has %d properties; want the connector's %d", def, len(s.Properties), len(want))
		}
	}
	check("EmailV3", connectorEmailV3)
	check("AttachmentV2", connectorAttachmentV2)
	if imp := schema("EmailV3").Properties["Importance"].Value; !slices.Equal(imp.Enum, []any{"Normal", "Low", "High"}) || imp.Default != "Normal" {
		t.Errorf("Importance enum %v default %v; want the connector's [Normal Low High], Normal", imp.Enum, imp.Default)
	}
	if items := schema("EmailV3").Properties["Attachments"].Value.Items; items == nil || items.Ref != "#/components/schemas/AttachmentV2" {
		t.Errorf("EmailV3.Attachments items are %v; want AttachmentV2", items)
	}
	// V1 and V2, the connector's deprecated operations: V3's fields and
	// IsHtml; V1's attachments also have ContentTransferEncoding.
	withHTML := append(slices.Clone(connectorEmailV3), connectorProperty{"IsHtml", "boolean", "", "Is HTML", "advanced"})
	withHTML[4].format = "" // Body: HTML or not, as IsHtml says
	check("Email", withHTML)
	check("EmailV2", withHTML)
	check("Attachment", append(slices.Clone(connectorAttachmentV2[:2]),
		connectorProperty{"ContentData", "string", "", "Content", ""}, connectorAttachmentV2[3],
		connectorProperty{"ContentTransferEncoding", "string", "", "Content Transfer Encoding", ""}))
	for def, req := range map[string][]string{
		"AttachmentV2": {"ContentData", "ContentType", "FileName"},
		"Attachment":   {"ContentData", "ContentType", "ContentTransferEncoding", "FileName"},
	} {
		if got := schema(def).Required; !slices.Equal(got, req) {
			t.Errorf("%s requires %v; want %v (the connector's, and FileName, which sendq needs)", def, got, req)
		}
	}
}

func TestLogicAppsDefinitionOperations(t *testing.T) {
	t.Parallel()
	doc2, doc3, err := apitest.LoadSwagger(deploy.LogicAppsDefinition)
	if err != nil {
		t.Fatal(err)
	}
	served, err := openapi3.NewLoader().LoadFromData(producer.OpenAPI)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []struct{ method, path, id, summary, visibility, response, field string }{
		{"POST", "/SendEmailV3", "SendEmailV3", "Send Email (V3)", "", "202", "id"},
		{"GET", "/v1/emails/{id}", "GetEmailStatus", "Get email status", "", "200", "status"},
		{"DELETE", "/v1/emails/{id}", "CancelEmail", "Cancel email", "", "200", "status"},
		{"GET", "/TestConnection", "TestConnection", "Test connection", "internal", "200", "status"},
		{"POST", "/SendEmail", "SendEmail", "Send Email [DEPRECATED]", "internal", "202", "id"},
		{"POST", "/SendEmailV2", "SendEmailV2", "Send Email (V2) [DEPRECATED]", "internal", "202", "id"},
	} {
		item := doc3.Paths.Find(want.path)
		if item == nil || item.GetOperation(want.method) == nil {
			t.Errorf("no operation %s %s", want.method, want.path)
			continue
		}
		op := item.GetOperation(want.method)
		if op.OperationID != want.id || op.Summary != want.summary || str(op.Extensions["x-ms-visibility"]) != want.visibility {
			t.Errorf("%s %s is %q %q visibility %v; want %q %q %q", want.method, want.path, op.OperationID, op.Summary, op.Extensions["x-ms-visibility"], want.id, want.summary, want.visibility)
		}
		// Later steps use the answer's fields: the success response has a schema naming them.
		resp := op.Responses.Value(want.response)
		if resp == nil || resp.Value.Content.Get("application/json") == nil ||
			resp.Value.Content.Get("application/json").Schema.Value.Properties[want.field] == nil {
			t.Errorf("%s %s: response %s has no schema with %q", want.method, want.path, want.response, want.field)
		}
		// And sendq serves it: the same operation is in openapi.yaml.
		if s := served.Paths.Find(want.path); s == nil || s.GetOperation(want.method) == nil {
			t.Errorf("%s %s is not a route of openapi.yaml", want.method, want.path)
		}
	}
	if n := len(doc2.Paths); n != 5 {
		t.Errorf("%d paths; want 5 (SendEmail, V2, V3, the email's status and cancel, TestConnection): a batch operation waits for batches", n)
	}

	// The connection: an API key in the Authorization header.
	sec := doc2.SecurityDefinitions["api_key"]
	if sec == nil || sec.Type != "apiKey" || sec.In != "header" || sec.Name != "Authorization" || !strings.Contains(sec.Description, "Bearer") {
		t.Errorf("securityDefinitions.api_key = %+v; want an apiKey in the Authorization header, Bearer KEY", sec)
	}
	if len(doc2.Security) != 1 || doc2.Security[0]["api_key"] == nil {
		t.Errorf("security = %v; want api_key on every operation", doc2.Security)
	}
	// Host and scheme are placeholders to replace.
	if doc2.Host != "sendq.example.com" || !slices.Equal(doc2.Schemes, []string{"https"}) || doc2.BasePath != "/" {
		t.Errorf("host %q schemes %v basePath %q; want the placeholder sendq.example.com, https, /", doc2.Host, doc2.Schemes, doc2.BasePath)
	}
	for _, ct := range []string{"application/json", "text/json"} {
		if !slices.Contains(doc2.Consumes, ct) {
			t.Errorf("consumes %v; want %s", doc2.Consumes, ct)
		}
	}
}

// Testdeploy.LogicAppsDefinitionUsesWhatCustomConnectorsTake checks the
// definition against what the custom connector tooling accepts beyond
// OpenAPI 2.0: its schema of connector definitions (microsoft/
// PowerPlatformConnectors) lists the formats it takes, the values of
// x-ms-visibility, and the x-ms- extensions allowed on each object.
func TestLogicAppsDefinitionUsesWhatCustomConnectorsTake(t *testing.T) {
	t.Parallel()
	var doc any
	if err := json.Unmarshal(deploy.LogicAppsDefinition, &doc); err != nil {
		t.Fatal(err)
	}
	formats := []string{"int32", "int64", "float", "double", "byte", "binary", "date", "date-time", "password", "date-no-tz", "html", "uri"}
	extensions := []string{"x-ms-summary", "x-ms-visibility", "x-ms-url-encoding"}
	var walk func(v any, path string)
	walk = func(v any, path string) {
		switch x := v.(type) {
		case map[string]any:
			for k, val := range x {
				p := path + "/" + k
				switch {
				case k == "format" && !strings.Contains(path, "/properties/format"):
					if !slices.Contains(formats, str(val)) {
						t.Errorf("%s is %v; custom connectors take %v", p, val, formats)
					}
				case k == "x-ms-visibility":
					if !slices.Contains([]string{"important", "advanced", "internal"}, str(val)) {
						t.Errorf("%s is %v; want important, advanced or internal", p, val)
					}
				case strings.HasPrefix(k, "x-ms-") && !slices.Contains(extensions, k):
					t.Errorf("%s: custom connectors do not take %s here (x-ms-capabilities, for one, is refused)", p, k)
				}
				walk(val, p)
			}
		case []any:
			for i, val := range x {
				walk(val, path+"/"+strconv.Itoa(i))
			}
		}
	}
	walk(doc, "#")
}

func TestLogicAppsProperties(t *testing.T) {
	t.Parallel()
	var props any
	if err := json.Unmarshal(deploy.LogicAppsProperties, &props); err != nil {
		t.Fatalf("apiProperties.json: %v", err)
	}
	key := get(props, "properties", "connectionParameters", "api_key")
	if str(get(key, "type")) != "securestring" || str(get(key, "uiDefinition", "displayName")) == "" ||
		!strings.Contains(str(get(key, "uiDefinition", "description")), "Bearer") {
		t.Errorf("connectionParameters.api_key = %v; want a securestring whose description says Bearer KEY", key)
	}
	if str(get(props, "properties", "iconBrandColor")) == "" {
		t.Error("properties.iconBrandColor is required by the custom connector tooling")
	}
	for k := range props.(map[string]any)["properties"].(map[string]any) {
		if !slices.Contains([]string{"iconBrandColor", "capabilities", "connectionParameters", "policyTemplateInstances"}, k) {
			t.Errorf("properties.%s is not a member apiProperties.json takes", k)
		}
	}
}
