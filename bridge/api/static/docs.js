// Starts Swagger UI on the daemon's /docs page (bridge/api/docs.py). A file, not an inline script,
// so that the page's Content-Security-Policy can allow scripts from the daemon only.
(function () {
  "use strict";
  var node = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: node.getAttribute("data-openapi-url"),
    domNode: node,
    layout: "BaseLayout",
    presets: [SwaggerUIBundle.presets.apis],
    deepLinking: true,
    showCommonExtensions: true,
    displayRequestDuration: true,
    // The token typed into Authorize stays in this page's memory, never in localStorage.
    persistAuthorization: false,
    // No badge fetched from validator.swagger.io: the page calls nothing but the daemon.
    validatorUrl: null,
  });
})();
