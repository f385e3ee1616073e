"""Django's SecurityMiddleware and CommonMiddleware for the client API, at home under ASGI.

Django adapts a MiddlewareMixin to an async request by running each of its hooks through
`sync_to_async`, a hop to another thread and back per hook. These hooks do no I/O (headers,
a redirect decided from the URL), so they run in the event loop; under WSGI they are Django's.
"""

from django.middleware import common, security


class InEventLoop:
    async def __acall__(self, request):
        response = self.process_request(request)
        response = response or await self.get_response(request)
        return self.process_response(request, response)


class SecurityMiddleware(InEventLoop, security.SecurityMiddleware):
    pass


class CommonMiddleware(InEventLoop, common.CommonMiddleware):
    pass
