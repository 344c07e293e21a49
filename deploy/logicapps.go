package deploy

import _ "embed"

// LogicAppsDefinition is logic-apps/apiDefinition.swagger.json: the
// OpenAPI 2.0 definition a Logic App or Power Automate imports as a custom
// connector for sendq (README: Moving a Logic App to sendq).
//
//go:embed logic-apps/apiDefinition.swagger.json
var LogicAppsDefinition []byte

// LogicAppsProperties is logic-apps/apiProperties.json: the connection
// parameters (the API key) that go with LogicAppsDefinition.
//
//go:embed logic-apps/apiProperties.json
var LogicAppsProperties []byte
