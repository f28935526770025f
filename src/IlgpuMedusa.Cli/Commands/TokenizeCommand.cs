using System.CommandLine;
using System.Text.Json;
using IlgpuMedusa.Models;

namespace IlgpuMedusa.Cli.Commands;

/// <summary><c>tokenize --model DIR --text TEXT</c>: prints the ids (with BOS) as one JSON array.</summary>
internal static class TokenizeCommand
{
    public static Command Create()
    {
        var model = new Option<string>("--model", "-m") { Description = "Model directory.", DefaultValueFactory = _ => DemoModel.DefaultDirectory };
        var text = new Option<string>("--text") { Description = "Text to encode.", Required = true };
        var noBos = new Option<bool>("--no-bos") { Description = "Do not prepend BOS." };
        var command = new Command("tokenize", "Print the token ids of a text as a JSON array.") { model, text, noBos };
        command.SetAction(parse =>
        {
            var dir = parse.GetValue(model)!;
            CommonOptions.EnsureDemoIfDefault(dir);
            var tokenizer = ModelDirectory.OpenTokenizer(dir);
            var ids = tokenizer.Encode(parse.GetValue(text)!, addBos: !parse.GetValue(noBos));
            Console.WriteLine(JsonSerializer.Serialize(ids));
            return 0;
        });
        return command;
    }
}
