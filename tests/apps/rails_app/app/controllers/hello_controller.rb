class HelloController < ApplicationController
  skip_forgery_protection

  def index
    render plain: "hello from rails #{Rails.version}\n"
  end

  def env
    render json: { script_name: request.script_name, path_info: request.path_info, root_path: root_path,
                   env_url: env_url, relative_url_root: Rails.application.config.relative_url_root,
                   environment: Rails.env }
  end

  def echo
    body = request.body.read
    render json: { length: body.bytesize, sha256: Digest::SHA256.hexdigest(body) }
  end
end
