// Package templates owns sendq's email templates: their Redis keys, their
// immutable versions, parsing them (html/template for Html, text/template
// for Subject and Text) and rendering them strictly: a variable a template
// uses that the data lacks (or gives as null) is an error naming it, never
// an empty string or "<no value>".
//
// Templates are scoped to an owner, the same owner an email records
// (queue.Email.Owner: "key:<id>" or "tenant:<name>", "" without API keys):
// a key sees and uses its own templates, or its tenant's, never another's.
// Every key of one owner shares one Redis Cluster hash tag, so a version is
// written atomically beside the owner's index of names and a listing is one
// hash on one node.
package templates
